"""Scan built images for secrets and for facts of the machine that built them.

An image is installed on many machines and published, so it must hold no password hash
(only locked accounts: ``*`` or ``!``), no private key (the access key's private half lives
only in the build's output), no SSH host key (made at first boot), no machine-id, no
resolver of the build host and no path of the build (its cache, work folders, checkout).

Two kinds of look, both needed:

- **raw bytes** of every disk, filesystem and file, holes skipped (``SEEK_DATA``): a build
  path anywhere, and a private key block at the start of a 4 KiB block (where a key *file*
  starts, also a deleted one in free blocks; libraries that embed test keys mid-file, like
  GnuTLS's self-tests, are not key files);
- **files**, read with ``debugfs`` (ext4: the disk's root partition and each guest disk in
  it) or from an unpacked tree (the ISO's squashfs): ``/etc/shadow``, ``/etc/machine-id``,
  ``/etc/ssh``, ``/etc/resolv.conf``.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

#: a PEM or OpenSSH private key block followed by its first base64 line
PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z0-9 ]{0,24}PRIVATE KEY-----\r?\n[A-Za-z0-9+/=]{40}")
CHUNK = 64 << 20
OVERLAP = 4096
BLOCK = 4096
MAX_HITS = 1000  # per needle; one per 4 KiB block


def host_needles(*paths: Path) -> dict[str, bytes]:
    """What of this build host must appear in no image: the given paths (cache, checkout),
    its resolvers and the bodies of its SSH host public keys."""
    needles = {f"build path {p}": str(p).encode() for p in paths}
    needles |= {f"this host's resolver {ns}": f"nameserver {ns}".encode()
                for ns in sorted(host_nameservers())}
    for pub in sorted(Path("/etc/ssh").glob("ssh_host_*_key.pub")):
        fields = pub.read_text().split()
        if len(fields) >= 2:
            needles[f"this host's SSH key {pub.name}"] = fields[1].encode()
    return needles


def host_nameservers() -> set[str]:
    try:
        text = Path("/etc/resolv.conf").read_text()
    except OSError:
        return set()
    return {ln.split()[1] for ln in text.splitlines()
            if ln.startswith("nameserver") and len(ln.split()) > 1}


def _extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    off = 0
    while off < size:
        try:
            data = os.lseek(fd, off, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole is left
            return
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        yield data, hole
        off = hole


def scan_bytes(path: Path, needles: dict[str, bytes]) -> list[tuple[str, int]]:
    """What the raw bytes of ``path`` hold, with the offset: each needle found (its first
    ``MAX_HITS`` places), and each private key block that starts a 4 KiB block."""
    found: list[tuple[str, int]] = []
    keys: list[int] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        for start, end in _extents(fd, os.fstat(fd).st_size):
            pos = start
            while pos < end:
                n = min(CHUNK, end - pos)
                buf = os.pread(fd, n + OVERLAP if pos + n < end else n, pos)
                for what, needle in needles.items():
                    i = buf.find(needle)
                    while i != -1 and i < n and len(found) < MAX_HITS * len(needles):
                        found.append((what, pos + i))
                        i = buf.find(needle, (pos + i) // BLOCK * BLOCK + BLOCK - pos)
                keys += [pos + m.start() for m in PRIVATE_KEY.finditer(buf)
                         if m.start() < n and (pos + m.start()) % BLOCK == 0]
                pos += n
    finally:
        os.close(fd)
    return [*found, *(("a private key", at) for at in keys[:MAX_HITS])]


def check_files(where: str, read: Callable[[str], str | None],
                listdir: Callable[[str], list[str]], nameservers: set[str]) -> list[str]:
    """The per-file checks of one root filesystem, given how to read a file (``None``: no
    such file) and list a folder."""
    out: list[str] = []
    shadow = read("/etc/shadow")
    if shadow is None:
        out.append(f"{where}: no /etc/shadow")
    for line in (shadow or "").splitlines():
        fields = line.split(":")
        if len(fields) > 1 and not fields[1].startswith(("*", "!")):
            out.append(f"{where}: /etc/shadow: account {fields[0]} has a password "
                       f"({'empty' if not fields[1] else 'a hash'})")
    machine_id = read("/etc/machine-id")
    if machine_id is not None and machine_id.strip() not in ("", "uninitialized"):
        out.append(f"{where}: /etc/machine-id is set ({machine_id.strip()})")
    dbus_id = read("/var/lib/dbus/machine-id")
    if dbus_id is not None and dbus_id.strip():
        out.append(f"{where}: /var/lib/dbus/machine-id is set")
    out += [f"{where}: /etc/ssh/{name}: an SSH host key made at build time"
            for name in listdir("/etc/ssh") if name.startswith("ssh_host_")]
    for line in (read("/etc/resolv.conf") or "").splitlines():
        if line.startswith("nameserver") and line.split()[1:2] and \
                line.split()[1] in nameservers:
            out.append(f"{where}: /etc/resolv.conf names this host's resolver {line.split()[1]}")
    return out


def _debugfs(image: str, request: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["debugfs", "-R", request, image], capture_output=True, timeout=120)


class Ext4:
    """Files of an ext4 filesystem in a file (``offset``: where it starts), via debugfs."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.image = f"{path}?offset={offset}" if offset else str(path)

    def read(self, name: str) -> str | None:
        found = _debugfs(self.image, f"stat {name}")
        if found.returncode != 0 or b"not found" in found.stderr:
            return None
        return _debugfs(self.image, f"cat {name}").stdout.decode(errors="replace")

    def listdir(self, folder: str) -> list[str]:
        res = _debugfs(self.image, f"ls -p {folder}")
        return [f.split("/")[5] for f in res.stdout.decode(errors="replace").splitlines()
                if f.count("/") >= 6 and f.split("/")[5] not in (".", "..")]

    def owners(self, offsets: list[int]) -> dict[int, str]:
        """The file whose data holds each byte offset of the filesystem (or a free block)."""
        blocks = sorted({o // BLOCK for o in offsets})
        inodes: dict[int, str] = {}
        for i in range(0, len(blocks), 500):
            res = _debugfs(self.image, "icheck " + " ".join(map(str, blocks[i:i + 500])))
            for line in res.stdout.decode().splitlines()[1:]:
                fields = line.split()
                if len(fields) == 2 and fields[0].isdigit():
                    inodes[int(fields[0])] = fields[1]
        numbers = sorted({n for n in inodes.values() if n.isdigit()})
        names: dict[str, str] = {}
        if numbers:
            res = _debugfs(self.image, "ncheck " + " ".join(numbers))
            for line in res.stdout.decode().splitlines()[1:]:
                fields = line.split(None, 1)
                if len(fields) == 2:
                    names.setdefault(fields[0], fields[1])
        out = {}
        for o in offsets:
            n = inodes.get(o // BLOCK, "")
            out[o] = names.get(n, f"inode {n}") if n.isdigit() else f"free block {o // BLOCK}"
        return out

    def dump(self, name: str, dest: Path) -> None:
        res = _debugfs(self.image, f"dump {name} {dest}")
        if not dest.is_file():
            raise RuntimeError(f"debugfs could not dump {name}: {res.stderr.decode()}")


def scan_disk(disk: Path, root_offset: int, tmp: Path, needles: dict[str, bytes]) -> list[str]:
    """A raw disk: its bytes, its root filesystem's files and each guest disk in it
    (``/var/lib/xen/images/NAME/disk.raw``, copied out one at a time)."""
    servers = host_nameservers()
    root = Ext4(disk, root_offset)
    hits = scan_bytes(disk, needles)
    where = root.owners([at - root_offset for _what, at in hits if at >= root_offset])
    out = list(dict.fromkeys(  # one line per file
        f"{disk.name}: {what} in "
        f"{where[at - root_offset] if at >= root_offset else f'byte {at}'}"
        for what, at in hits))
    out += check_files(disk.name, root.read, root.listdir, servers)
    for guest in root.listdir("/var/lib/xen/images"):
        copy = tmp / f"{guest}.raw"
        root.dump(f"/var/lib/xen/images/{guest}/disk.raw", copy)
        try:
            g = Ext4(copy)
            out += check_files(f"{disk.name}: guest {guest}", g.read, g.listdir, servers)
        finally:
            copy.unlink()
    return out


def scan_tree(tree: Path, label: str, tmp: Path, needles: dict[str, bytes]) -> list[str]:
    """An unpacked root filesystem: every regular file's bytes, the per-file checks, and
    the guest disks in it."""
    servers = host_nameservers()
    out: list[str] = []
    for dirpath, _dirs, files in os.walk(tree):
        for f in files:
            p = Path(dirpath, f)
            if p.is_file() and not p.is_symlink():
                out += list(dict.fromkeys(f"{label}: /{p.relative_to(tree)}: {what}"
                                          for what, _at in scan_bytes(p, needles)))

    def read(name: str) -> str | None:
        p = tree / name.lstrip("/")
        return p.read_text(errors="replace") if p.is_file() else None

    def listdir(folder: str) -> list[str]:
        p = tree / folder.lstrip("/")
        return sorted(os.listdir(p)) if p.is_dir() else []

    out += check_files(label, read, listdir, servers)
    for guest in listdir("/var/lib/xen/images"):
        g = Ext4(tree / "var/lib/xen/images" / guest / "disk.raw")
        out += check_files(f"{label}: guest {guest}", g.read, g.listdir, servers)
    return out


def scan_iso(iso: Path, tmp: Path, needles: dict[str, bytes]) -> list[str]:
    """An ISO: the raw bytes of the medium, and its live root filesystem unpacked."""
    out = list(dict.fromkeys(f"{iso.name}: {what}" for what, _at in scan_bytes(iso, needles)))
    squash = tmp / "filesystem.squashfs"
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract",
                    "/live/filesystem.squashfs", str(squash)], check=True, capture_output=True)
    tree = tmp / "live"
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(tree), str(squash)], check=True,
                   capture_output=True)
    squash.unlink()
    out += scan_tree(tree, f"{iso.name}: live root", tmp, needles)
    subprocess.run(["rm", "-rf", str(tree)], check=True)
    return out

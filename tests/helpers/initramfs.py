"""Small initramfs images: busybox-static, an ``/init`` script, chosen binaries with the
shared libraries they need (found with ``ldd``), kernel modules with their dependencies,
packed as a ``newc`` cpio archive compressed with gzip.

Used to smoke-test a hypervisor and toolstack in QEMU without building a disk image::

    ramfs = Initramfs()
    ramfs.add_tree_binaries(toolstack / "install", ["usr/sbin/xl", "usr/sbin/xenstored"])
    ramfs.add_modules(kernel_root, release, ["xenfs", "xen-evtchn"])
    ramfs.set_init(script_text)
    ramfs.write(work / "initrd.gz", log=log)
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from xenforge.core import run as runner
from xenforge.core.errors import XenforgeError
from xenforge.core.sandbox import Sandbox

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
DIRS = ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "run",
        "var/run", "var/lib", "var/log", "root", "lib", "lib64")
_LDD_RE = re.compile(r"^\s*(?:(\S+) => )?(/\S+) \(0x[0-9a-f]+\)$")


class Initramfs:
    """An initramfs being assembled in a temporary folder (removed by :meth:`write`)."""

    def __init__(self, busybox: Path = BUSYBOX, sysroot: Path | None = None) -> None:
        """``sysroot``: the root filesystem the binaries were built for (a buildroot):
        their libraries are looked up and taken from there, not from this host."""
        if not busybox.is_file():
            raise XenforgeError(f"{busybox} is missing",
                                hint="install busybox-static (ci/setup-host.sh does)")
        self._tmp = tempfile.TemporaryDirectory(prefix="xenforge-initramfs-")
        self.root = Path(self._tmp.name)
        for d in DIRS:
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self._busybox = busybox
        self._sysroot = sysroot
        self._module_order: list[str] = []

    # -- contents ---------------------------------------------------------------------
    def add_file(self, dest: str, src: Path, mode: int | None = None) -> None:
        """Copy ``src`` to ``/dest`` (symlinks are followed)."""
        target = self.root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
        if mode is not None:
            target.chmod(mode)

    def add_text(self, dest: str, text: str, mode: int = 0o644) -> None:
        target = self.root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def set_init(self, script: str) -> None:
        """The ``/init`` script (run by the kernel as PID 1)."""
        self.add_text("init", script, 0o755)

    def add_tree_binaries(self, tree: Path, paths: Iterable[str], *,
                          log: Path | None = None) -> None:
        """Copy binaries of an install tree (``tree/usr/sbin/xl`` -> ``/usr/sbin/xl``) and
        every shared library they load, looked up in the tree's library folders first, then
        on this host (libraries of the tree keep their path inside the tree)."""
        lib_dirs = [d for d in (tree / "usr/lib/x86_64-linux-gnu", tree / "usr/lib",
                                tree / "usr/lib64", tree / "lib") if d.is_dir()]
        for rel in paths:
            src = tree / rel
            if not src.exists():
                raise XenforgeError(f"{src} does not exist", hint="was the toolstack built?")
            self.add_file(rel, src)
            self._add_libs(src, lib_dirs, tree, log)

    def add_host_binaries(self, paths: Iterable[Path], *, log: Path | None = None) -> None:
        """Copy binaries of this host (same path inside) with their shared libraries."""
        for p in paths:
            self.add_file(str(p), p)
            self._add_libs(p, [], None, log)

    def _add_libs(self, binary: Path, lib_dirs: list[Path], tree: Path | None,
                  log: Path | None) -> None:
        env = {"LD_LIBRARY_PATH": ":".join(str(d) for d in lib_dirs)} if lib_dirs else {}
        argv: list[str | Path] = ["ldd", binary]
        if self._sysroot is not None:  # the sysroot's loader and libraries, not the host's
            box = Sandbox(root=self._sysroot, release="sysroot",
                          readable=[binary, *lib_dirs, *([tree] if tree else [])])
            argv = list(box.argv([str(a) for a in argv]))
        res = runner.run(argv, env=env, capture=True, check=False, log=log)
        if res.returncode != 0:  # a static binary or a script: nothing to add
            return
        for line in res.stdout.splitlines():
            if "not found" in line:
                raise XenforgeError(f"{binary.name} needs a library that was not found: "
                                    f"{line.strip()}")
            m = _LDD_RE.match(line)
            if not m:
                continue
            lib = Path(m.group(2))
            dest = str(lib)
            if tree is not None and lib.is_relative_to(tree):
                dest = "/" + lib.relative_to(tree).as_posix()
            if not (self.root / dest.lstrip("/")).exists():
                inside_tree = tree is not None and lib.is_relative_to(tree)
                source = lib if inside_tree or self._sysroot is None else \
                    self._sysroot / str(lib).lstrip("/")
                self.add_file(dest, source)

    def add_modules(self, modules_root: Path, release: str, names: Iterable[str]) -> list[str]:
        """Copy kernel modules (and the modules they depend on, from ``modules.dep``) of
        ``modules_root/lib/modules/<release>``; returns their load order (paths inside the
        initramfs), also written to ``/etc/modules.order`` for the init script."""
        base = modules_root / "lib" / "modules" / release
        dep_file = base / "modules.dep"
        if not dep_file.is_file():
            raise XenforgeError(f"{dep_file} is missing", hint="run depmod for that tree")
        deps: dict[str, list[str]] = {}
        by_name: dict[str, str] = {}
        for line in dep_file.read_text().splitlines():
            mod, _, rest = line.partition(":")
            deps[mod] = rest.split()
            name = Path(mod).name.split(".ko")[0]
            by_name[name] = mod
            by_name[name.replace("-", "_")] = mod
        order: list[str] = []

        def visit(mod: str) -> None:
            if mod in order:
                return
            for d in reversed(deps.get(mod, [])):
                visit(d)
            order.append(mod)

        for name in names:
            found = by_name.get(name) or by_name.get(name.replace("-", "_"))
            if found is None:
                raise XenforgeError(f"kernel {release} has no module {name}",
                                    hint="is it built in (=y)? then leave it out")
            visit(found)
        inside = []
        for mod in order:
            dest = f"lib/modules/{release}/{mod}"
            self.add_file(dest, base / mod)
            inside.append("/" + dest)
        self._module_order.extend(m for m in inside if m not in self._module_order)
        self.add_text("etc/modules.order", "\n".join(self._module_order) + "\n")
        return inside

    # -- output -------------------------------------------------------------------------
    def _install_busybox(self, log: Path | None) -> None:
        self.add_file("bin/busybox", self._busybox, 0o755)
        res = runner.run([self._busybox, "--list-full"], capture=True, log=log)
        for applet in res.stdout.split():
            link = self.root / applet
            if link.exists() or link.is_symlink():
                continue  # a real binary of that name was added
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(self.root / "bin/busybox", link.parent), link)

    def write(self, dest: Path, *, log: Path | None = None) -> Path:
        """Pack the initramfs into ``dest`` (gzip'd newc cpio) and remove the staging."""
        if not (self.root / "init").is_file():
            raise XenforgeError("the initramfs has no /init", hint="call set_init() first")
        self._install_busybox(log)
        names = sorted(p.relative_to(self.root).as_posix()
                       for p in self.root.rglob("*"))
        listing = ("\n".join([".", *names]) + "\n").encode()
        cpio = dest.with_name(dest.name + ".cpio.tmp")
        with open(cpio, "wb"):
            pass
        runner.run(["cpio", "--quiet", "-o", "-H", "newc", "--reproducible", "-R", "0:0",
                    "-O", cpio], cwd=self.root, stdin_data=listing, log=log)
        tmp = dest.with_name(dest.name + ".tmp")
        with open(cpio, "rb") as src, open(tmp, "wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            shutil.copyfileobj(src, gz)
        cpio.unlink()
        tmp.replace(dest)
        self._tmp.cleanup()
        return dest

    def close(self) -> None:
        self._tmp.cleanup()

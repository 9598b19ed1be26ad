"""Fetching pinned Debian packages through apt: ``apt:`` source packages and ``deb:`` members.

- ``apt: name=version``: ``apt-get source --download-only``; the ``.dsc`` is checked against
  apt's (signed) index and against ``dsc_sha256`` when given; every file the ``.dsc`` lists is
  checked against its ``Checksums-Sha256``.
- ``deb: name=version`` + ``member``: ``apt-get download``; the ``.deb`` is checked against the
  SHA256 of apt's index, the member is extracted with ``dpkg-deb`` and checked against
  ``sha256`` when given.

Verified files go into the download store with a small index record, so a second fetch of the
same pin is answered locally (no apt, no network).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xenforge.core import run as runner
from xenforge.core.errors import CommandFailed, SourceError
from xenforge.core.files import note
from xenforge.core.hashing import sha256_file, sha256_json
from xenforge.lib.deb822 import checksums_sha256, parse_deb822
from xenforge.sources.download import DownloadStore

if TYPE_CHECKING:
    from xenforge.sources.specs import AptSource, DebSource

APT_TIMEOUT = 3600.0
_APT_OPTS = ["-q", "-o", "Acquire::Retries=3"]


def _apt_versions(name: str, kind: str) -> list[str]:
    """Versions apt knows of ``name`` (kind "Sources" or "Packages"), newest first."""
    res = runner.run(["apt-cache", "madison", name], capture=True, check=False)
    versions = []
    for line in res.stdout.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[2].endswith(kind) and parts[1] not in versions:
            versions.append(parts[1])
    return versions


def _not_in_index(what: str, name: str, version: str, kind: str) -> SourceError:
    known = _apt_versions(name, kind)
    listed = ", ".join(known[:12]) if known else "none"
    lookup = "apt-cache showsrc" if kind == "Sources" else "apt-cache madison"
    hint = (f"pin one of the versions apt knows ({lookup} {name}); "
            "if the version is new, run `apt-get update`")
    if kind == "Sources":
        hint += "; apt needs a deb-src entry for the suite (ci/setup-host.sh adds bookworm's)"
    return SourceError(f"{what} {name}={version} is not in apt's index (versions apt knows: "
                       f"{listed})", hint=hint)


def _apt_failed(what: str, exc: CommandFailed) -> SourceError:
    tail = "\n".join(f"    | {t}" for t in exc.tail[-8:])
    return SourceError(f"apt could not download {what} (exit code {exc.returncode})"
                       + (f"\n  last output:\n{tail}" if tail else ""),
                       hint="check that Debian's archive is reachable and the version is still "
                            "in it; full output in the log" + (f": {exc.log}" if exc.log else ""))


def _mismatch(what: str, expected: str, actual: str, field: str) -> SourceError:
    return SourceError(f"checksum mismatch for {what}: expected sha256 {expected}, got {actual}",
                       hint=f"if the new file is trusted, update {field} in the recipe to "
                            f"{actual}")


# ---------------------------------------------------------------------------------------------
# apt: source packages
# ---------------------------------------------------------------------------------------------


def fetch_apt(spec: AptSource, dest: Path, store: DownloadStore, log: Path) -> dict[str, Any]:
    key = sha256_json({"kind": "apt", "apt": spec.apt})
    rec = store.read_index(key)
    if rec is not None and all(store.has(f["sha256"]) for f in rec.get("files", [])):
        note(log, f"{spec.describe()}: found in {store.root}, not downloaded")
    else:
        rec = _download_source(spec, store, log)
        store.write_index(key, rec)
    if spec.dsc_sha256 is not None and rec["dsc_sha256"] != spec.dsc_sha256:
        raise _mismatch(f"{rec['dsc']} of {spec.describe()}", spec.dsc_sha256,
                        rec["dsc_sha256"], "dsc_sha256")
    for f in rec["files"]:
        if not store.export(f["sha256"], dest / f["name"]):
            raise SourceError(f"the stored copy of {f['name']} ({spec.describe()}) was corrupt "
                              "and has been removed", hint="run the build again to download it")
    names = [f["name"] for f in rec["files"]]
    return {"kind": spec.kind, "primary": primary_of(names, rec["dsc"]), "apt": spec.apt,
            "package": rec["package"], "version": rec["version"], "dsc": rec["dsc"],
            "dsc_sha256": rec["dsc_sha256"], "files": rec["files"]}


def primary_of(names: list[str], dsc: str) -> str:
    """The upstream tarball of a source package: the .orig tarball, else the native one."""
    orig = [n for n in names if re.search(r"\.orig\.tar\.[a-z0-9]+$", n)]
    if orig:
        return orig[0]
    native = [n for n in names if re.search(r"\.tar(\.[a-z0-9]+)?$", n)
              and ".debian.tar" not in n]
    return native[0] if native else dsc


def _download_source(spec: AptSource, store: DownloadStore, log: Path) -> dict[str, Any]:
    name, version = spec.package, spec.version
    res = runner.run(["apt-cache", "showsrc", name], capture=True, check=False, log=log)
    stanzas = [s for s in parse_deb822(res.stdout) if s.get("Version") == version]
    if not stanzas:
        raise _not_in_index("Debian source package", name, version, "Sources")
    index = checksums_sha256(stanzas[0])
    source_name = stanzas[0].get("Package", name)
    with store.tempdir("apt") as tmp:
        note(log, f"{spec.describe()}: apt-get source --download-only")
        try:
            runner.run(["apt-get", *_APT_OPTS, "source", "--download-only", spec.apt],
                       cwd=tmp, log=log, timeout=APT_TIMEOUT)
        except CommandFailed as exc:
            raise _apt_failed(spec.describe(), exc) from exc
        dscs = sorted(p.name for p in tmp.glob("*.dsc"))
        if len(dscs) != 1:
            raise SourceError(f"apt-get source for {spec.apt} gave {len(dscs)} .dsc files "
                              f"({', '.join(dscs) or 'none'}); expected one",
                              hint="check the package name; see the log")
        dsc = dscs[0]
        dsc_sha = sha256_file(tmp / dsc)
        if dsc in index and index[dsc][0] != dsc_sha:
            raise _mismatch(f"{dsc} (apt's index)", index[dsc][0], dsc_sha, "nothing: apt's "
                            "index and the archive disagree; retry later or pick a mirror;"
                            " do not update")
        if spec.dsc_sha256 is not None and dsc_sha != spec.dsc_sha256:
            raise _mismatch(f"{dsc} of {spec.describe()}", spec.dsc_sha256, dsc_sha,
                            "dsc_sha256")
        listed = checksums_sha256(parse_deb822((tmp / dsc).read_text(errors="replace"))[0])
        if not listed:
            raise SourceError(f"{dsc} of {spec.apt} has no Checksums-Sha256 field",
                              hint="xenforge needs a source package with SHA-256 checksums")
        files = [{"name": dsc, "sha256": dsc_sha}]
        for fname, (sha, size) in sorted(listed.items()):
            path = tmp / fname
            if not path.is_file():
                raise SourceError(f"{fname}, listed in {dsc}, was not downloaded",
                                  hint="see the apt-get output in the log")
            actual = sha256_file(path)
            if actual != sha or path.stat().st_size != size:
                raise _mismatch(f"{fname} (listed in {dsc})", sha, actual, "nothing: the "
                                "archive's file does not match its own .dsc; do not")
            files.append({"name": fname, "sha256": sha})
        for f in files:
            store.add(tmp / f["name"], f["sha256"])
    note(log, f"{spec.describe()}: {len(files)} files verified against {dsc}")
    return {"package": source_name, "version": version, "dsc": dsc, "dsc_sha256": dsc_sha,
            "files": files}


# ---------------------------------------------------------------------------------------------
# deb: one member of a binary package
# ---------------------------------------------------------------------------------------------


def fetch_deb(spec: DebSource, dest: Path, store: DownloadStore, log: Path) -> dict[str, Any]:
    key = sha256_json({"kind": "deb", "deb": spec.deb, "member": spec.member})
    rec = store.read_index(key)
    if rec is not None and store.has(str(rec.get("sha256"))):
        note(log, f"{spec.describe()}: found in {store.root}, not downloaded")
    else:
        rec = _download_member(spec, store, log)
        store.write_index(key, rec)
    if spec.sha256 is not None and rec["sha256"] != spec.sha256:
        raise _mismatch(spec.describe(), spec.sha256, rec["sha256"], "sha256")
    name = Path(spec.member).name
    if not store.export(rec["sha256"], dest / name):
        raise SourceError(f"the stored copy of {spec.describe()} was corrupt and has been "
                          "removed", hint="run the build again to download it")
    return {"kind": spec.kind, "primary": name, "deb": spec.deb, "member": spec.member,
            "package": spec.package, "version": spec.version, "deb_file": rec["deb_file"],
            "deb_sha256": rec["deb_sha256"], "files": [{"name": name, "sha256": rec["sha256"]}]}


def _download_member(spec: DebSource, store: DownloadStore, log: Path) -> dict[str, Any]:
    name, version = spec.package, spec.version
    res = runner.run(["apt-cache", "show", spec.deb], capture=True, check=False, log=log)
    known = {s["SHA256"] for s in parse_deb822(res.stdout)
             if s.get("Package") == name and s.get("Version") == version and "SHA256" in s}
    if not known:
        raise _not_in_index("Debian package", name, version, "Packages")
    with store.tempdir("deb") as tmp:
        note(log, f"{spec.describe()}: apt-get download {spec.deb}")
        try:
            runner.run(["apt-get", *_APT_OPTS, "download", spec.deb], cwd=tmp, log=log,
                       timeout=APT_TIMEOUT)
        except CommandFailed as exc:
            raise _apt_failed(f"Debian package {spec.deb}", exc) from exc
        debs = sorted(tmp.glob("*.deb"))
        if len(debs) != 1:
            raise SourceError(f"apt-get download {spec.deb} gave {len(debs)} .deb files",
                              hint="see the log")
        deb = debs[0]
        deb_sha = sha256_file(deb)
        if deb_sha not in known:
            raise SourceError(f"{deb.name} has sha256 {deb_sha}, which apt's index does not "
                              f"list for {spec.deb} ({', '.join(sorted(known))})",
                              hint="apt's index and the archive disagree: run `apt-get "
                                   "update` and try again")
        root = tmp / "root"
        runner.run(["dpkg-deb", "-x", deb, root], log=log)
        member = root / spec.member
        if member.is_symlink() or not member.is_file():
            raise SourceError(f"{spec.deb} has no regular file {spec.member}"
                              + _nearby(root, spec.member),
                              hint=f"`dpkg-deb -c {deb.name}` lists the package's files; fix "
                                   "`member:` in the recipe")
        sha = sha256_file(member)
        if spec.sha256 is not None and sha != spec.sha256:
            raise _mismatch(spec.describe(), spec.sha256, sha, "sha256")
        store.add(member, sha)
    note(log, f"{spec.describe()}: {deb.name} verified against apt's index, member sha256 {sha}")
    return {"deb_file": deb.name, "deb_sha256": deb_sha, "member": spec.member, "sha256": sha}


def _nearby(root: Path, member: str) -> str:
    base = Path(member).name
    same = [p.relative_to(root).as_posix() for p in root.rglob(base) if p.is_file()]
    if same:
        return f" (a file of that name is at {', '.join(same[:3])})"
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return f" (it has {', '.join(files[:5])}{', ...' if len(files) > 5 else ''})"

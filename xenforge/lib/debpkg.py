"""Binary Debian packages from staged trees, with Debian's own tools.

A package is staged as ``<root>/debian/<name>/`` (its files) under a minimal source folder
(``<root>/debian/control`` and ``changelog``); then, as debhelper would:
:func:`normalize` (owners, modes), :func:`strip_elf`, ``dpkg-shlibdeps`` (:func:`shlibdeps`),
``DEBIAN/{conffiles,md5sums,shlibs,triggers}``, ``dpkg-gencontrol`` (fields, Installed-Size,
substvars), ``dpkg-deb --build`` and :func:`lintian`.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from xenforge.core import run as runner

#: how this module runs its tools: a stage's ``ctx.run`` (its log, its buildroot)
Run = Callable[..., runner.Result]

#: Debian's version syntax (epoch not used here)
VERSION_RE = re.compile(r"^[0-9][A-Za-z0-9.+~-]*$")
_TAG_RE = re.compile(r"^([EWIPXON]): (\S+?)(?: \w+)?: (\S+)(.*)$")


def is_elf(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def files_below(root: Path) -> list[Path]:
    """Regular files and symlinks below ``root`` (sorted, ``DEBIAN/`` excluded)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not (Path(dirpath) == root and d == "DEBIAN"))
        for d in dirnames:
            if Path(dirpath, d).is_symlink():
                out.append(Path(dirpath, d))
        out.extend(Path(dirpath, n) for n in sorted(filenames))
    return out


_SHARED_RE = re.compile(r"\.so(\.[0-9.]+)?$")


def normalize(root: Path, *, plain: Iterable[str] = ()) -> None:
    """Modes as Debian wants them (as dh_fixperms): dirs 0755, files 0755 when executable
    else 0644; shared objects and the files at the ``plain`` paths always 0644."""
    prefixes = tuple(plain)
    relative_symlinks(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            p = Path(dirpath, d)
            if not p.is_symlink():
                p.chmod(0o755)
        for n in filenames:
            p = Path(dirpath, n)
            if p.is_symlink():
                continue
            rel = p.relative_to(root).as_posix()
            executable = (p.stat().st_mode & 0o111 and not rel.startswith(prefixes)
                          and not _SHARED_RE.search(p.name))
            p.chmod(0o755 if executable else 0o644)
    root.chmod(0o755)


def relative_symlinks(root: Path) -> None:
    """Absolute symlinks inside the package become relative ones (as dh_link does)."""
    for p in files_below(root):
        if not p.is_symlink():
            continue
        target = os.readlink(p)
        if os.path.isabs(target):
            rel = os.path.relpath(root / target.lstrip("/"), p.parent)
            p.unlink()
            os.symlink(rel, p)


def strip_elf(root: Path, *, run: Run) -> list[Path]:
    """Strip ELF files as dh_strip does (libraries --strip-unneeded, archives
    --strip-debug); returns the ELF files found (not archives)."""
    elves: list[Path] = []
    for p in files_below(root):
        if p.is_symlink():
            continue
        if p.name.endswith(".a"):
            run(["strip", "--strip-debug", "--remove-section=.comment",
                 "--remove-section=.note", "--enable-deterministic-archives", p])
            continue
        if not is_elf(p):
            continue
        elves.append(p)
        shared = ".so" in p.name
        args = ["strip", "--remove-section=.comment", "--remove-section=.note"]
        if shared:
            args.append("--strip-unneeded")
        run([*args, p])
    return elves


def soname(path: Path, *, run: Run) -> str | None:
    res = run(["objdump", "-p", path], capture=True)
    m = re.search(r"^\s*SONAME\s+(\S+)$", res.stdout, re.M)
    return m.group(1) if m else None


def shlibs_lines(root: Path, package: str, version: str, *, run: Run) -> list[str]:
    """``DEBIAN/shlibs`` lines for the public shared libraries a package ships."""
    lines = []
    for p in files_below(root):
        if p.is_symlink() or not is_elf(p) or ".so." not in p.name:
            continue
        name = soname(p, run=run)
        if not name:
            continue
        m = re.match(r"^(.+)\.so\.(.+)$", name)
        if m:
            lines.append(f"{m.group(1)} {m.group(2)} {package} (>= {version})")
    return sorted(set(lines))


def shlibdeps(src_root: Path, package: str, elves: list[Path], *, run: Run) -> None:
    """Run dpkg-shlibdeps for ``elves`` of ``package``: writes debian/<package>.substvars."""
    dynamic = [p for p in elves if _is_dynamic(p, run)]
    if not dynamic:
        return
    run(["dpkg-shlibdeps", f"-Tdebian/{package}.substvars", f"-x{package}",
         f"-Sdebian/{package}", *(os.path.relpath(p, src_root) for p in dynamic)],
        cwd=src_root)


def _is_dynamic(path: Path, run: Run) -> bool:
    res = run(["readelf", "-d", path], capture=True, check=False)
    return "(NEEDED)" in res.stdout


def write_control_files(root: Path, *, conffiles: bool = True) -> None:
    """DEBIAN/conffiles (every file below etc/) and DEBIAN/md5sums."""
    debian = root / "DEBIAN"
    debian.mkdir(exist_ok=True)
    regular = [p for p in files_below(root) if p.is_file() and not p.is_symlink()]
    if conffiles:
        conf = [f"/{p.relative_to(root).as_posix()}" for p in regular
                if p.relative_to(root).parts[0] == "etc"]
        if conf:
            (debian / "conffiles").write_text("\n".join(conf) + "\n")
    sums = []
    for p in regular:
        h = hashlib.md5(p.read_bytes(), usedforsecurity=False).hexdigest()
        sums.append(f"{h}  {p.relative_to(root).as_posix()}")
    (debian / "md5sums").write_text("\n".join(sums) + "\n")
    for p in debian.iterdir():
        p.chmod(0o755 if p.name in ("preinst", "postinst", "prerm", "postrm", "config")
                else 0o644)


def gzip_n(text: str, dest: Path) -> None:
    """``gzip -9n``: no name, no timestamp (reproducible)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                compresslevel=9, mtime=0) as gz:
        gz.write(text.encode())


def gencontrol(src_root: Path, package: str, version: str, *, run: Run) -> None:
    run(["dpkg-gencontrol", f"-p{package}", f"-v{version}",
         f"-Tdebian/{package}.substvars", f"-Pdebian/{package}"], cwd=src_root)


def build_deb(pkg_root: Path, dest_dir: Path, *, run: Run) -> Path:
    run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", pkg_root, dest_dir])
    control = (pkg_root / "DEBIAN" / "control").read_text()
    fields = dict(re.findall(r"^(Package|Version|Architecture): (.+)$", control, re.M))
    return dest_dir / f"{fields['Package']}_{fields['Version']}_{fields['Architecture']}.deb"


@dataclass
class LintianReport:
    deb: Path
    tags: list[tuple[str, str, str]] = field(default_factory=list)  # (level, tag, rest)
    text: str = ""

    @property
    def errors(self) -> list[str]:
        return [f"{t} {rest}".strip() for lvl, t, rest in self.tags if lvl == "E"]

    @property
    def warnings(self) -> list[str]:
        return [f"{t} {rest}".strip() for lvl, t, rest in self.tags if lvl == "W"]


def lintian(deb: Path, *, run: Run) -> LintianReport:
    res = run(["lintian", "--no-tag-display-limit", "--allow-root", deb],
              capture=True, check=False, timeout=900)
    report = LintianReport(deb, text=res.stdout)
    for line in res.stdout.splitlines():
        m = _TAG_RE.match(line)
        if m:
            report.tags.append((m.group(1), m.group(3), m.group(4).strip()))
    if res.returncode not in (0, 1, 2) or (res.returncode and not report.tags):
        report.tags.append(("E", "lintian-failed", f"lintian exited {res.returncode}"))
    return report

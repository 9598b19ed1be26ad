"""Run a command inside a buildroot (a root filesystem of the target release) with
bubblewrap: a private mount namespace whose root is a tmpfs holding the buildroot's ``/usr``,
``/etc``, ``/opt``, ``/srv`` and ``/var/lib`` read only, a fresh ``/proc``, ``/dev``, ``/tmp``
and ``/run``, and the host paths the stage works in bound at the same paths (so no path in a
command line needs translating). No network, its own PID namespace, and every mount goes
away with the process however it ends (nothing to release, nothing to leak).

The toolchain, libraries and Debian tools are the target release's; the host only needs
bubblewrap. A command the buildroot lacks is reported naming the Debian package that has it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from xenforge.core import run as runner
from xenforge.core.errors import InputError

#: the buildroot's directories the sandbox shows (read only); /bin, /sbin, /lib... are its
#: merged-/usr symlinks
SHOWN = ("usr", "etc", "opt", "srv", "var/lib")
#: where commands are looked for inside (the runner's clean PATH)
PATH_DIRS = ("usr/sbin", "usr/bin", "sbin", "bin")
#: what a shell or make says when a program is missing
_MISSING = re.compile(r"(?:^|[\s:])([A-Za-z0-9_.+-]+): (?:command )?not found\b|"
                      r"\bexecvp (?:of )?'?([A-Za-z0-9_./+-]+)'? failed|"
                      r"\b([A-Za-z0-9_.+-]+): No such file or directory\b")


@dataclass
class Sandbox:
    root: Path  # the buildroot's filesystem
    release: str  # e.g. "debian/trixie", for messages
    writable: list[Path] = field(default_factory=list)
    readable: list[Path] = field(default_factory=list)

    def check_paths(self) -> None:
        """A bound host path below a directory the buildroot provides cannot be shown."""
        for path in (*self.writable, *self.readable):
            rel = Path(os.path.abspath(path)).relative_to("/")
            for shown in SHOWN:
                if rel == Path(shown) or Path(shown) in rel.parents:
                    raise InputError(
                        f"{path} is below /{shown}, which a buildroot's own /{shown} hides",
                        hint="use a cache directory elsewhere (e.g. --cache-dir /var/tmp/"
                        "xenforge) or a checkout outside /usr, /etc, /opt, /srv, /var/lib")

    def argv(self, command: Sequence[str], *, cwd: Path | None = None) -> list[str]:
        """``command`` wrapped in bubblewrap (after :meth:`check_paths`)."""
        args = ["bwrap", "--die-with-parent", "--unshare-pid", "--unshare-net",
                "--unshare-ipc", "--unshare-uts", "--hostname", "buildroot"]
        for name in sorted(os.listdir(self.root)):
            path = self.root / name
            if path.is_symlink():  # merged /usr: bin -> usr/bin, lib -> usr/lib ...
                args += ["--symlink", os.readlink(path), f"/{name}"]
        for shown in SHOWN:
            if (self.root / shown).is_dir():
                args += ["--ro-bind", str(self.root / shown), f"/{shown}"]
        args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run",
                 "--dir", "/var/tmp", "--dir", "/root"]
        for path in _outermost(self.readable):
            args += ["--ro-bind", str(path), str(path)]
        for path in _outermost(self.writable):
            args += ["--bind", str(path), str(path)]
        if cwd is not None:
            args += ["--chdir", str(cwd)]
        return [*args, "--", *command]

    def find(self, program: str, cwd: Path | None = None) -> Path | None:
        """Where ``program`` is as the sandbox sees it (None: it is not there): a bare name
        in the buildroot's PATH, a path in a bound host dir (``./configure`` of the work
        dir) or in the buildroot."""
        if "/" in program:
            path = Path(program) if os.path.isabs(program) else (cwd or Path.cwd()) / program
            path = Path(os.path.abspath(path))
            if any(path == b or b in path.parents for b in (*self.writable, *self.readable)):
                return path if os.path.lexists(path) else None
            target = self.root / str(path).lstrip("/")
            return target if os.path.lexists(target) else None
        for d in PATH_DIRS:
            candidate = self.root / d / program
            if os.path.lexists(candidate):
                return candidate
        return None

    def missing_program_error(self, program: str) -> InputError:
        package = host_package_of(program)
        what = f"the Debian package {package}" if package else f"the package that has {program}"
        return InputError(
            f"the buildroot ({self.release}) has no `{program}`",
            hint=f"add {what} to buildroot.packages in the release file "
                 f"(releases/{self.release.replace('/', '-')}.yaml)")

    def explain_failure(self, tail: Iterable[str]) -> str:
        """A hint naming a program the command missed in the buildroot, or ''."""
        for line in tail:
            for m in _MISSING.finditer(line):
                name = next(g for g in m.groups() if g)
                program = name.rsplit("/", 1)[-1]
                if program and self.find(program) is None and host_package_of(program):
                    return (f"the buildroot ({self.release}) lacks `{program}`: add the "
                            f"Debian package {host_package_of(program)} to buildroot.packages "
                            f"in releases/{self.release.replace('/', '-')}.yaml")
        return ""


def _outermost(paths: Iterable[Path]) -> list[Path]:
    """``paths`` without those below another one (a bind covers what is below it)."""
    unique = sorted({Path(os.path.abspath(p)) for p in paths if os.path.exists(p)})
    out: list[Path] = []
    for p in unique:
        if not any(p == q or q in p.parents for q in out):
            out.append(p)
    return out


_package_memo: dict[str, str] = {}


def host_package_of(program: str) -> str:
    """The Debian package that ships ``program`` on this (Debian) host, or ''."""
    if program not in _package_memo:
        found = ""
        for d in ("/usr/bin", "/usr/sbin", "/bin", "/sbin"):
            res = runner.run(["dpkg-query", "-S", f"{d}/{program}"], capture=True,
                             check=False)
            if res.returncode == 0 and ":" in res.stdout:
                found = res.stdout.split(":", 1)[0].split(",")[0].strip()
                break
        _package_memo[program] = found
    return _package_memo[program]

"""Edit an ext4 filesystem image without mounting it (no root, no loop device), with
e2fsprogs: ``dumpe2fs`` (usage), ``e2fsck`` (check), ``resize2fs`` (grow) and ``debugfs``
(read and write files, folders, symlinks; holes in sparse files are kept)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from xenforge.core import run as runner
from xenforge.core.errors import XenforgeError


class Ext4Error(XenforgeError):
    """An e2fsprogs tool failed on the image."""


def _quote(path: str | Path) -> str:
    text = str(path)
    if '"' in text or "\n" in text:
        raise Ext4Error(f"cannot pass {text!r} to debugfs (a quote or newline in the path)")
    return f'"{text}"'


@dataclass
class Edits:
    """debugfs commands, collected and then applied in one run (:meth:`Ext4Image.apply`)."""

    commands: list[str] = field(default_factory=list)

    def mkdir(self, path: str) -> None:
        self.commands.append(f"mkdir {_quote(path)}")

    def write(self, local: Path, path: str, *, replace: bool = False) -> None:
        """Copy the host file ``local`` to ``path`` (sparse; root-owned, its mode kept);
        ``replace``: an existing file there is removed first (a missing one is fine)."""
        if replace:
            self.commands.append(f"rm {_quote(path)}")
        self.commands.append(f"write {_quote(local)} {_quote(path)}")

    def symlink(self, path: str, target: str) -> None:
        self.commands.append(f"symlink {_quote(path)} {_quote(target)}")


@dataclass
class Usage:
    size: int  # bytes of the filesystem
    used: int  # bytes in use
    block_size: int


class Ext4Image:
    def __init__(self, path: Path, *, log: Path | None = None) -> None:
        self.path = path
        self.log = log

    def usage(self) -> Usage:
        text = runner.run(["dumpe2fs", "-h", self.path], capture=True, log=self.log).stdout
        fields = {k.strip(): v.strip() for k, _, v in
                  (line.partition(":") for line in text.splitlines()) if v}
        block = int(fields["Block size"])
        total, free = int(fields["Block count"]), int(fields["Free blocks"])
        return Usage(size=total * block, used=(total - free) * block, block_size=block)

    def check(self, *, repair: bool = False) -> None:
        """``e2fsck -f``: preen what is safe to fix (``repair``) or only look (``-n``)."""
        res = runner.run(["e2fsck", "-f", "-p" if repair else "-n", self.path], log=self.log,
                         check=False)
        # 0: clean; 1: errors corrected (only when repairing)
        if res.returncode not in ((0, 1) if repair else (0,)):
            raise Ext4Error(f"e2fsck found errors in {self.path.name} (exit {res.returncode})",
                            hint=f"see the log{f': {self.log}' if self.log else ''}")

    def grow(self, size: int) -> None:
        """Grow the image file and its filesystem to ``size`` bytes."""
        if size < self.path.stat().st_size:
            raise Ext4Error(f"{self.path.name} is larger than the {size} bytes it should grow to")
        self.check(repair=True)  # resize2fs insists on a freshly checked filesystem
        with open(self.path, "r+b") as f:
            f.truncate(size)
        runner.run(["resize2fs", self.path], log=self.log)

    def read(self, path: str, dest: Path) -> bool:
        """Copy ``path`` out of the image to ``dest``; False when the image lacks it."""
        dest.unlink(missing_ok=True)
        runner.run(["debugfs", "-R", f"dump -p {_quote(path)} {_quote(dest)}", self.path],
                   log=self.log, capture=True)
        return dest.is_file()

    def apply(self, edits: Edits, script: Path) -> None:
        """Run the collected commands; any complaint of debugfs is an error (it exits 0)."""
        script.write_text("\n".join(edits.commands) + "\n")
        res = runner.run(["debugfs", "-w", "-f", script, self.path], log=self.log,
                         capture=True)
        # `rm` is only used to replace (the file may not be there yet)
        fine = ("debugfs ", "rm: File not found by ext2_lookup")
        complaints = [ln for ln in res.stderr.splitlines()
                      if ln.strip() and not ln.startswith(fine)]
        if complaints:
            raise Ext4Error(f"debugfs could not edit {self.path.name}: {complaints[0]}",
                            hint="see the log for every command it ran")

"""Install seeds: a small filesystem labelled ``XFSEED`` whose ``xenforge/boot.cfg`` the
ISO's GRUB menu reads at boot (before it shows the menu) - the default entry, the timeout
and extra kernel parameters, e.g. an unattended install. Like Anaconda's ``OEMDRV`` volume
or cloud-init's ``cidata``: the released ISO stays as it is, a second medium (a USB stick,
a virtual disk) says what to do with it.

::

    write_seed(Path("seed.img"), {"xenforge.install": "/dev/vda",
                                  "xenforge.then": "poweroff"}, work=tmp)

The seed is an ext4 image made with ``mkfs.ext4 -d`` (no mount).
"""

from __future__ import annotations

from pathlib import Path

from xenforge.core.errors import InputError
from xenforge.core.run import run

#: the volume label the ISO's menu searches for
SEED_LABEL = "XFSEED"
#: the file it reads there (GRUB script: set default, timeout, xf_auto)
SEED_FILE = "xenforge/boot.cfg"
#: menu entries of the iso stage a seed may choose
ENTRIES = ("live", "install", "rescue")


def seed_config(params: dict[str, str], *, entry: str = "install", timeout: int = 0) -> str:
    """The GRUB script of a seed: ``entry`` the default after ``timeout`` seconds, ``params``
    appended to the dom0 kernel's command line (an empty value: a bare flag)."""
    if entry not in ENTRIES:
        raise InputError(f"no menu entry {entry!r}", hint=f"use one of {', '.join(ENTRIES)}")
    words = " ".join(k if v == "" else f"{k}={_value(k, v)}" for k, v in params.items())
    return (f"# xenforge install seed (read by the ISO's GRUB menu)\n"
            f"set default={entry}\nset timeout={int(timeout)}\nset xf_auto='{words}'\n")


def _value(key: str, value: str) -> str:
    """A parameter's value as one word: GRUB splits the seed's words at spaces and escapes
    quotes (which Linux does not undo), so spaces and ``%`` are written ``%20``/``%25``,
    which xenforge-install decodes."""
    if any(c in value for c in "\"'\\$;\n{}"):
        raise InputError(f"kernel parameter {key}: {value!r} holds a quote, $, ;, braces or \\",
                         hint="the ISO's menu takes plain words")
    return value.replace("%", "%25").replace(" ", "%20")


def write_seed(dest: Path, params: dict[str, str], *, work: Path, entry: str = "install",
               log: Path | None = None) -> Path:
    """Write the seed image ``dest`` (4 MiB of ext4, labelled :data:`SEED_LABEL`)."""
    tree = work / "seed"
    (tree / Path(SEED_FILE).parent).mkdir(parents=True, exist_ok=True)
    (tree / SEED_FILE).write_text(seed_config(params, entry=entry))
    dest.unlink(missing_ok=True)
    run(["mkfs.ext4", "-q", "-F", "-L", SEED_LABEL, "-d", tree, dest, "4M"], log=log)
    return dest

"""What a path from user input names, asked without ever raising: ``Path.is_file()`` and
``Path.exists()`` raise OSError for a name the system refuses (over 255 bytes: ENAMETOOLONG;
EACCES), which a recipe, a series or an argv can hold."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Literal

Kind = Literal["file", "dir", "special"]


def path_kind(p: Path) -> Kind | None:
    """"file", "dir", "special" (device, FIFO, socket) or None: missing, a symlink loop, or
    a name no file can have (too long, a NUL byte, a lone surrogate)."""
    try:
        mode = p.stat().st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode):
        return "file"
    return "dir" if stat.S_ISDIR(mode) else "special"


def resolved(p: Path) -> Path:
    """``p`` absolute, with its symlinks resolved as far as they resolve. Never raises:
    ``Path.resolve()`` does for a symlink loop and a name the system refuses (ENAMETOOLONG),
    and such a path is then reported missing by whoever looks for it."""
    try:
        return p.resolve()
    except (OSError, RuntimeError, ValueError):
        return Path(os.path.abspath(p))

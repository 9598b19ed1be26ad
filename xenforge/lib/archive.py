"""Debian archive mirrors as xenforge writes them: into a ``sources.list`` line and the
argv of debootstrap (the buildroot), into diskimage-builder's environment (the images)."""

from __future__ import annotations

#: a mirror's URL: one word, no space, quote or newline (a newline would add a sources.list
#: line of its own, a leading ``-`` an option); the recipe and the stages check it
MIRROR_PATTERN = r"^(https?|file|ftp)://[A-Za-z0-9._~:/?&=%+@,-]+$"

"""The command line: ``xenforge COMMAND ...`` (see :mod:`xenforge.cli.app`)."""

from xenforge.cli.app import main

__all__ = ["main"]

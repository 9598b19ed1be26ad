"""One root exception. Every error says what went wrong, where, and how to fix it."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path


class XenforgeError(Exception):
    """Root of every error xenforge reports to a person.

    ``exit_code`` follows the CLI contract: 1 = a build failed, 2 = bad input or usage.
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str = "", where: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.where = where

    def render(self) -> str:
        head = f"{self.where}: {self.message}" if self.where else self.message
        return f"{head}\n  hint: {self.hint}" if self.hint else head


class InputError(XenforgeError):
    """Bad input from the user: a recipe, a spec, a path, a checksum, a CLI argument."""

    exit_code = 2


def _pretty(path: Path) -> Path:
    """A path relative to the working directory when it is below it."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


@dataclass
class Problem:
    """One validation finding, located as precisely as we can."""

    file: Path
    line: int | None
    path: str  # a field path such as ``guests[1].memory``; "" for the whole file
    message: str
    hint: str = ""

    def render(self) -> str:
        loc = f"{_pretty(self.file)}:{self.line}" if self.line else str(_pretty(self.file))
        field_ = f" {self.path}:" if self.path else ""
        text = f"{loc}:{field_} {self.message}"
        return f"{text}\n    hint: {self.hint}" if self.hint else text


@dataclass
class ValidationFailed(InputError):
    """All problems found in one or more recipes, reported together."""

    problems: list[Problem] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.problems)
        InputError.__init__(self, f"{n} problem{'s' if n != 1 else ''} found")

    def render(self) -> str:
        return "\n".join(p.render() for p in self.problems) + f"\n{self.message}"


class SourceError(XenforgeError):
    """A pinned source could not be fetched or did not verify."""


class StageFailed(XenforgeError):
    """A stage of the build failed; names the node and the log to read."""

    def __init__(self, node: str, message: str, *, log: Path | None = None, hint: str = "") -> None:
        where = f"stage {node}"
        if log is not None:
            hint = f"{hint}; full log: {log}" if hint else f"full log: {log}"
        super().__init__(message, hint=hint, where=where)
        self.node = node
        self.log = log


def exit_status(returncode: int) -> str:
    """How a command ended, for people: "failed with exit code 2", "was killed by SIGKILL"."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"failed with exit code {returncode}"


class CommandFailed(XenforgeError):
    """A subprocess exited non-zero (raised by :mod:`xenforge.core.run`)."""

    def __init__(self, argv: list[str], returncode: int, tail: list[str], log: Path | None) -> None:
        cmd = " ".join(argv)
        if len(cmd) > 300:
            cmd = cmd[:297] + "..."
        lines = "\n".join(f"    | {t}" for t in tail)
        msg = f"command {exit_status(returncode)}: {cmd}"
        if lines:
            msg += f"\n  last output:\n{lines}"
        super().__init__(msg, hint=f"full log: {log}" if log else "")
        self.argv = argv
        self.returncode = returncode
        self.tail = tail
        self.log = log

"""The stage interface. A stage is a small class; adding one is three steps:

1. write ``xenforge/stages/<name>.py`` with a subclass of :class:`Stage`: a ``name``, a
   ``version`` (bump it whenever the stage's behaviour changes: it is part of every node id),
   an ``Options`` pydantic model, the ``artifacts`` globs to export, and ``run(ctx)`` that
   writes only below ``ctx.out`` (and uses ``ctx.work`` as scratch);
2. register it in :data:`xenforge.stages.REGISTRY`;
3. teach :mod:`xenforge.plan` which recipe section creates its nodes.

The engine does the rest: node ids, caching, locking, atomic commit, logs, progress.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from xenforge.core import run as runner

if TYPE_CHECKING:
    from xenforge.cache.store import Cache


class StageOptions(BaseModel):
    """Base of every stage's options: strict, immutable, JSON-serialisable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class StageContext:
    """Everything a stage's ``run`` may use. It must write only below ``out`` and ``work``."""

    node: str  # the node's name in the graph, e.g. "kernel:dom0"
    node_id: str
    options: Any  # an instance of the stage's Options
    inputs: Mapping[str, Path]  # label -> committed output dir of an input node
    files: Mapping[str, Path]  # label -> input file/dir (hashed into the node id)
    out: Path  # empty dir; becomes the cached output on success
    work: Path  # scratch dir, removed afterwards
    log: Path  # this node's log file
    cache: Cache
    jobs: int = 2
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("xenforge.stage"))

    def run(self, argv: Sequence[str | Path], **kw: Any) -> runner.Result:
        """Run a command with this node's log (see :func:`xenforge.run.run`)."""
        kw.setdefault("log", self.log)
        return runner.run(argv, **kw)

    def note(self, text: str) -> None:
        """A line for the stage log (and the progress view)."""
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(f"[xenforge] {text}\n")


class Stage:
    name: ClassVar[str]
    version: ClassVar[int]
    Options: ClassVar[type[StageOptions]]
    #: glob patterns (relative to ``out``) of files exported to ``out/<recipe>/``
    artifacts: ClassVar[tuple[str, ...]] = ()
    #: True for stages whose work is heavy (compilers): the executor runs one at a time
    heavy: ClassVar[bool] = False

    def run(self, ctx: StageContext) -> None:
        raise NotImplementedError

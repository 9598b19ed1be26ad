"""The stage interface. A stage is a small class; adding one is three steps:

1. write ``xenforge/stages/<name>.py`` with a subclass of :class:`Stage`: a ``name``, a
   ``version`` (bump it whenever the stage's behaviour changes: it is part of every node id),
   an ``Options`` model, the ``artifacts`` globs to export, and ``run(ctx)`` that writes only
   below ``ctx.out`` (and uses ``ctx.work`` as scratch);
2. register it in :data:`xenforge.stages.REGISTRY`;
3. write the planner of the recipe section that creates its nodes (``xenforge/plan/``).

The engine does the rest: node ids, caching, locking, atomic commit, logs, progress.

A stage sees only its :class:`StageContext`: its inputs (committed outputs of other nodes,
read only), its files, ``out``, ``work``, named persistent scratch dirs
(:meth:`StageContext.persistent`), the compiler cache and the build's ``SOURCE_DATE_EPOCH``.
It never sees the cache itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from xenforge.core import run as runner
from xenforge.core.errors import CommandFailed, XenforgeError
from xenforge.core.files import note
from xenforge.core.model import FrozenModel
from xenforge.core.sandbox import Sandbox


class StageOptions(FrozenModel):
    """Base of every stage's options: strict, immutable, JSON-serialisable."""


@dataclass
class StageContext:
    """Everything a stage's ``run`` may use. It must write only below ``out`` and ``work``."""

    node: str  # the node's name in the graph, e.g. "kernel:dom0"
    node_id: str
    options: Any  # an instance of the stage's Options
    inputs: Mapping[str, Path | tuple[Path, ...]]  # label -> committed output dir(s)
    files: Mapping[str, Path | tuple[Path, ...]]  # label -> input file(s) (hashed into the id)
    out: Path  # empty dir; becomes the cached output on success
    work: Path  # scratch dir, removed afterwards
    log: Path  # this node's log file
    epoch: int  # SOURCE_DATE_EPOCH of the build (part of the node id)
    compiler_cache: Path  # ccache's directory, shared by every build
    jobs: int = 2
    #: name -> a persistent scratch dir (kept across builds, emptied by `cache gc`)
    scratch: Callable[[str], Path] | None = None
    #: labels of late inputs not built when the node started (see Stage.late_inputs)
    late: Collection[str] = ()
    #: (label, whether the wait idles the node) -> the output of a late input once built
    waiter: Callable[[str, bool], Path] | None = field(default=None, repr=False)
    #: seconds the node sat idle for a late input while nothing else of it ran (reported by
    #: a stage that waits beside its own work; the executor subtracts it from the node time)
    idle: float = 0.0
    #: the target release's buildroot the commands run in (stages with Stage.buildroot)
    sandbox: Sandbox | None = None

    # -- inputs ---------------------------------------------------------------------------
    def has_input(self, label: str) -> bool:
        return label in self.inputs or label in self.late

    def input(self, label: str) -> Path:
        """The output dir of the single input ``label`` (a late one: waiting for it)."""
        if label not in self.inputs and label in self.late:
            return self.wait_input(label)
        value = self.inputs.get(label)
        if not isinstance(value, Path):
            raise self.planner_bug(f"input {label!r} is {'a list' if value else 'missing'}")
        return value

    def input_list(self, label: str) -> list[Path]:
        """The output dirs of the list input ``label`` (empty when not given)."""
        value = self.inputs.get(label, ())
        return [value] if isinstance(value, Path) else list(value)

    def file(self, label: str) -> Path | None:
        value = self.files.get(label)
        if value is not None and not isinstance(value, Path):
            raise self.planner_bug(f"file {label!r} is a list")
        return value

    def file_list(self, label: str) -> list[Path]:
        value = self.files.get(label, ())
        return [value] if isinstance(value, Path) else list(value)

    def wait_input(self, label: str, *, idles: bool = True) -> Path:
        """The output of a late input, waiting for its node to finish (the stage started
        before it did); raises if that node failed or the build stopped. ``idles=False``:
        the stage goes on working meanwhile (it reports its own idle time in ``idle``)."""
        if label in self.inputs or self.waiter is None or label not in self.late:
            return self.input(label)
        path = self.waiter(label, idles)
        self.inputs = {**self.inputs, label: path}
        return path

    def persistent(self, name: str) -> Path:
        """A named scratch dir that outlives this build (an incremental kernel build dir,
        diskimage-builder's caches). Only a speed-up: ``cache gc`` may empty it."""
        if self.scratch is None:
            raise self.planner_bug("no persistent scratch space")
        return self.scratch(name)

    def planner_bug(self, what: str) -> XenforgeError:
        return XenforgeError(f"{self.node}: {what}", hint="a xenforge planner bug; please report "
                             "it with `xenforge plan --json RECIPE`")

    # -- commands and notes ----------------------------------------------------------------
    def run(self, argv: Sequence[str | Path], *, host: bool = False,
            **kw: Any) -> runner.Result:
        """Run a command with this node's log and the build's SOURCE_DATE_EPOCH (see
        :func:`xenforge.core.run.run`) - in the buildroot when the stage has one, unless
        ``host`` (file plumbing such as a hard-link copy, which crosses its mounts)."""
        kw.setdefault("log", self.log)
        kw["env"] = {"SOURCE_DATE_EPOCH": str(self.epoch), **(kw.get("env") or {})}
        if self.sandbox is None or host:
            return runner.run(argv, **kw)
        args = [os.fspath(a) for a in argv]
        cwd = kw.pop("cwd", None)
        if self.sandbox.find(args[0], cwd) is None:
            raise self.sandbox.missing_program_error(args[0])
        try:
            return runner.run(self.sandbox.argv(args, cwd=cwd), **kw)
        except CommandFailed as exc:
            why = self.sandbox.explain_failure(exc.tail)
            if why:
                exc.hint = f"{why}; {exc.hint}" if exc.hint else why
            raise

    def note(self, text: str) -> None:
        """A line for the stage log (and the progress view)."""
        note(self.log, text)


class Stage:
    name: ClassVar[str]
    version: ClassVar[int]
    Options: ClassVar[type[StageOptions]]
    #: glob patterns (relative to ``out``) of files exported to ``out/<recipe>/``
    artifacts: ClassVar[tuple[str, ...]] = ()
    #: True for stages whose work is heavy (compilers): the executor runs one at a time
    heavy: ClassVar[bool] = False
    #: True for stages that take minutes without being compilers (a debootstrap, an image):
    #: like heavy ones, a generated CI pipeline gives each such node a job of its own
    own_job: ClassVar[bool] = False
    #: why two builds of a node of this stage may give different bytes ("" : they must not;
    #: `xenforge build --check-repro` fails when they do)
    repro_note: ClassVar[str] = ""
    #: inputs the node may start without: the stage waits for them with
    #: ``ctx.wait_input(label)`` where it needs them (a rootfs debootstraps while the kernel
    #: it installs at the end still compiles)
    late_inputs: ClassVar[tuple[str, ...]] = ()
    #: False for stages whose bytes depend on neither the epoch nor the target release
    #: (fetching a pinned source, unpacking it): their ids leave the build env out, so
    #: recipes for other releases share them
    build_env: ClassVar[bool] = True
    #: True for stages whose commands run in the target release's buildroot (the planner
    #: gives them the input ``buildroot``): compilers, Debian packaging
    buildroot: ClassVar[bool] = False
    #: True for stages whose output the release's SBOM reads (sources, packages, root
    #: filesystems): a build opens such an object even when it is cached, and so checks it
    described: ClassVar[bool] = False

    def run(self, ctx: StageContext) -> None:
        raise NotImplementedError

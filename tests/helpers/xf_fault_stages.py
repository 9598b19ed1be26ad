"""A test stage for the fault tests (registered by them, never shipped): it writes as many
MiB as asked into its output or its work dir, to fill a disk."""

from __future__ import annotations

import hashlib
from typing import ClassVar, Literal

from xenforge.stages.base import Stage, StageContext, StageOptions

MIB = 1 << 20
#: the bytes of every MiB written (not zeros: nothing a filesystem could leave unallocated)
BLOCK = hashlib.sha256(b"xenforge fill").digest() * (MIB // 32)


class FillOptions(StageOptions):
    counter: str  # a file that gets one line per run (to count real builds)
    mib: int
    #: the staging dir (the cache's tmp/), work/, or work/ by a command (dd)
    where: Literal["out", "work", "command"] = "out"


class FillStage(Stage):
    """Writes ``mib`` MiB: as ``fill.bin`` of its output, or into its work dir, itself or
    with ``dd`` (then the output's ``fill.bin`` is the sha256 of what was written)."""

    name: ClassVar[str] = "fill-test"
    version: ClassVar[int] = 1
    Options: ClassVar[type[StageOptions]] = FillOptions
    build_env: ClassVar[bool] = False
    artifacts: ClassVar[tuple[str, ...]] = ("fill.bin",)

    def run(self, ctx: StageContext) -> None:
        opts: FillOptions = ctx.options
        with open(opts.counter, "a") as f:
            f.write(f"{ctx.node}\n")
        target = (ctx.out if opts.where == "out" else ctx.work) / "fill.bin"
        if opts.where == "command":
            ctx.run(["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={opts.mib}",
                     "conv=fsync"])
            (ctx.out / "fill.bin").write_text(hashlib.sha256(target.read_bytes()).hexdigest())
            return
        h = hashlib.sha256()
        with open(target, "wb") as out:
            for _ in range(opts.mib):
                out.write(BLOCK)
                h.update(BLOCK)
        if opts.where == "work":
            (ctx.out / "fill.bin").write_text(h.hexdigest() + "\n")

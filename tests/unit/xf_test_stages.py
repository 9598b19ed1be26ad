"""Small stages for engine tests (registered by the tests that use them, never shipped)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import ClassVar

from xenforge.stages.base import Stage, StageContext, StageOptions


class SlowOptions(StageOptions):
    counter: str  # a file that gets one line per run (to count real builds)
    seconds: float = 0.5
    payload_kib: int = 256


class SlowStage(Stage):
    """Writes a payload slowly, in chunks, and records that it ran."""

    name: ClassVar[str] = "slow-test"
    version: ClassVar[int] = 1
    Options: ClassVar[type[StageOptions]] = SlowOptions
    artifacts: ClassVar[tuple[str, ...]] = ("payload.bin",)

    def run(self, ctx: StageContext) -> None:
        opts: SlowOptions = ctx.options
        with open(opts.counter, "a") as f:
            f.write(f"{os.getpid()} {ctx.node}\n")
        chunk = bytes(range(256)) * 4  # 1 KiB
        steps = max(1, opts.payload_kib)
        with open(ctx.out / "payload.bin", "wb") as out:
            for _ in range(steps):
                out.write(chunk)
                time.sleep(opts.seconds / steps)
        for label, path in ctx.inputs.items():
            data = (path / "payload.bin").read_bytes()
            (ctx.out / f"from-{label}.len").write_text(str(len(data)))
        Path(ctx.work, "scratch").write_text("scratch")


class FailOptions(StageOptions):
    pass


class FailStage(Stage):
    """Writes some output, then a command fails."""

    name: ClassVar[str] = "fail-test"
    version: ClassVar[int] = 1
    Options: ClassVar[type[StageOptions]] = FailOptions

    def run(self, ctx: StageContext) -> None:
        (ctx.out / "half-written").write_text("not finished")
        ctx.run(["sh", "-c", "echo compiling; echo 'error: it broke' >&2; exit 4"])


#: register with monkeypatch.setitem(xenforge.stages.REGISTRY, name, target)
TEST_STAGES = {"slow-test": f"{__name__}:SlowStage", "fail-test": f"{__name__}:FailStage"}

"""Small stages for engine tests (registered by the tests that use them, never shipped)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import ClassVar

from xenforge.core import leftovers
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
    build_env: ClassVar[bool] = False
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
    build_env: ClassVar[bool] = False

    def run(self, ctx: StageContext) -> None:
        (ctx.out / "half-written").write_text("not finished")
        ctx.run(["sh", "-c", "echo compiling; echo 'error: it broke' >&2; exit 4"])


class PackOptions(StageOptions):
    pass


class PackStage(Stage):
    """Packs a tree node's output into artifacts (a tarball and a listing), with tar."""

    name: ClassVar[str] = "pack-test"
    version: ClassVar[int] = 1
    Options: ClassVar[type[StageOptions]] = PackOptions
    build_env: ClassVar[bool] = False
    artifacts: ClassVar[tuple[str, ...]] = ("tree.tar", "files.txt", "missing-*.bin")

    def run(self, ctx: StageContext) -> None:
        tree = ctx.inputs["tree"] / "tree"
        ctx.run(["tar", "--sort=name", "--mtime=@0", "--owner=0", "--group=0",
                 "-cf", ctx.out / "tree.tar", "-C", tree, "."])
        names = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file())
        (ctx.out / "files.txt").write_text("".join(f"{n}\n" for n in names))


class StampOptions(StageOptions):
    stamp: bool = False  # True: the build's clock goes into the artifact (not reproducible)


class StampStage(Stage):
    """Writes a build-info artifact; with ``stamp`` it holds the time of the build, as a
    careless build step would (for the reproducibility check)."""

    name: ClassVar[str] = "stamp-test"
    version: ClassVar[int] = 1
    Options: ClassVar[type[StageOptions]] = StampOptions
    build_env: ClassVar[bool] = False
    artifacts: ClassVar[tuple[str, ...]] = ("build-info.txt", "files.txt")

    def run(self, ctx: StageContext) -> None:
        opts: StampOptions = ctx.options
        tree = ctx.inputs["tree"] / "tree"
        names = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file())
        (ctx.out / "files.txt").write_text("".join(f"{n}\n" for n in names))
        built = f"built at {time.time_ns()}\n" if opts.stamp else "built at epoch 0\n"
        (ctx.out / "build-info.txt").write_text(built)


class NotedStampStage(StampStage):
    """The stamp stage, its clock declared (as the image stages declare theirs)."""

    name: ClassVar[str] = "noted-stamp-test"
    repro_note: ClassVar[str] = "it writes the clock of the build (on purpose, for a test)"


class HangOptions(StageOptions):
    pidfile: str


class HangStage(Stage):
    """Starts a command whose child runs for minutes (a stand-in for `make -j`)."""

    name: ClassVar[str] = "hang-test"
    version: ClassVar[int] = 1
    Options: ClassVar[type[StageOptions]] = HangOptions
    build_env: ClassVar[bool] = False

    def run(self, ctx: StageContext) -> None:
        opts: HangOptions = ctx.options
        ctx.run(["sh", "-c", f"sleep 300 & echo $! > {opts.pidfile}; wait"])


#: register with monkeypatch.setitem(xenforge.stages.REGISTRY, name, target)


class LateOptions(StageOptions):
    marker: str  # a file written when the stage starts (before its late input is built)


class LateStage(Stage):
    """Starts before its late input ``dep`` is built: writes the marker, runs a command that
    waits for the input's output (as diskimage-builder waits for the packages), then
    records what it saw."""

    name: ClassVar[str] = "late-test"
    version: ClassVar[int] = 1
    Options: ClassVar[type[StageOptions]] = LateOptions
    build_env: ClassVar[bool] = False
    late_inputs: ClassVar[tuple[str, ...]] = ("dep",)

    def run(self, ctx: StageContext) -> None:
        opts: LateOptions = ctx.options
        with open(opts.marker, "a") as f:
            f.write(f"started {ctx.node} dep-ready={'dep' in ctx.inputs}\n")
        dep = ctx.wait_input("dep")
        (ctx.out / "saw.len").write_text(str(len((dep / "payload.bin").read_bytes())))


class ChrootOptions(StageOptions):
    steps: int = 30  # lines the chrooted command writes, one every 0.1 s


#: a static shell and tools for the chroot (busybox-static)
BUSYBOX = "/bin/busybox"


class ChrootStage(Stage):
    """What an image stage does to the host, in small: an ext4 image on a loop device,
    mounted below ``ctx.work`` (a tmpfs mounted inside it too), a command chrooted into it
    (a static busybox) that writes for a few seconds, and everything released however the
    stage ends (``leftovers.guard``), as the rootfs stage does. Needs root. Output: the
    command's lines and the sha256 of the tree's Makefile as seen inside."""

    name: ClassVar[str] = "chroot-test"
    version: ClassVar[int] = 1
    Options: ClassVar[type[StageOptions]] = ChrootOptions
    build_env: ClassVar[bool] = False
    artifacts: ClassVar[tuple[str, ...]] = ("lines.txt", "sum.txt")

    def run(self, ctx: StageContext) -> None:
        opts: ChrootOptions = ctx.options
        image, mnt = ctx.work / "disk.img", ctx.work / "mnt"
        with leftovers.guard(ctx.work):
            ctx.run(["truncate", "-s", "16M", image])
            ctx.run(["mkfs.ext4", "-q", "-F", image])
            dev = ctx.run(["losetup", "--find", "--show", image], capture=True).stdout.strip()
            mnt.mkdir()
            ctx.run(["mount", dev, mnt])
            (mnt / "bin").mkdir()
            (mnt / "tmp").mkdir()
            ctx.run(["mount", "-t", "tmpfs", "tmpfs", mnt / "tmp"])
            shutil.copy2(BUSYBOX, mnt / "bin" / "busybox")
            shutil.copyfile(ctx.input("tree") / "tree" / "Makefile", mnt / "Makefile")
            script = (f"i=0; while [ $i -lt {opts.steps} ]; do echo line $i >> /tmp/lines; "
                      "/bin/busybox sleep 0.1; i=$((i+1)); done; "
                      "/bin/busybox cp /tmp/lines /lines.txt; "
                      "/bin/busybox sha256sum /Makefile > /sum.txt")
            ctx.run(["chroot", mnt, "/bin/busybox", "sh", "-c", script])
            for name in ("lines.txt", "sum.txt"):
                shutil.copyfile(mnt / name, ctx.out / name)


class BurnOptions(StageOptions):
    loops: int = 300000  # shell arithmetic: about a third of a CPU second here


class BurnStage(Stage):
    """Burns CPU in a child of a sandbox's PID namespace (bubblewrap never reaps its init,
    so only a cgroup can count it)."""

    name: ClassVar[str] = "burn-test"
    version: ClassVar[int] = 1
    Options: ClassVar[type[StageOptions]] = BurnOptions
    build_env: ClassVar[bool] = False
    artifacts: ClassVar[tuple[str, ...]] = ("done",)

    def run(self, ctx: StageContext) -> None:
        opts: BurnOptions = ctx.options
        ctx.run(["bwrap", "--die-with-parent", "--unshare-pid", "--ro-bind", "/", "/",
                 "--proc", "/proc", "--dev", "/dev", "--", "sh", "-c",
                 f"i=0; while [ $i -lt {opts.loops} ]; do i=$((i+1)); done & wait"])
        (ctx.out / "done").write_text("burnt\n")


TEST_STAGES = {"slow-test": f"{__name__}:SlowStage", "fail-test": f"{__name__}:FailStage",
               "pack-test": f"{__name__}:PackStage", "hang-test": f"{__name__}:HangStage",
               "late-test": f"{__name__}:LateStage", "stamp-test": f"{__name__}:StampStage",
               "chroot-test": f"{__name__}:ChrootStage", "burn-test": f"{__name__}:BurnStage",
               "noted-stamp-test": f"{__name__}:NotedStampStage"}

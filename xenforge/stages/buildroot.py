"""The ``buildroot`` stage: a root filesystem of the target release with the build
dependencies of the compile and packaging stages - the way sbuild, mock and osbuild's build
pipeline compile inside a chroot of the target, never with the host's toolchain.

Options: the release (codename), its mirror and security mirror, the packages (the release
file's ``buildroot.packages``). Output: ``root/`` (the filesystem, used read only) and
``buildroot.json`` (the release, every installed package with its version).

How: ``debootstrap --variant=minbase`` into the work dir, then ``apt-get install`` of the
packages inside it through bubblewrap (a private mount namespace: nothing to unmount
afterwards, whatever happens), apt's caches emptied. The stages that use it run every
command there (:class:`xenforge.core.sandbox.Sandbox`), so a trixie package gets trixie's
compiler, libraries and ``Depends``; the build host needs debootstrap and bubblewrap only.

The node id covers the release file's settings (suite, mirrors, package names); the
versions installed are whatever the archive serves the first time, recorded in
``buildroot.json`` - a later build of the same id reuses that buildroot.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from xenforge.core import leftovers
from xenforge.core.errors import StageFailed
from xenforge.core.files import write_json_atomic
from xenforge.core.run import Result
from xenforge.lib.archive import MIRROR_PATTERN
from xenforge.stages.base import Stage, StageContext, StageOptions

#: what the stages' commands need of the root besides the listed packages
ESSENTIAL = ("ca-certificates",)


class BuildrootOptions(StageOptions):
    distribution: str = Field(pattern=r"^[a-z]+$")
    release: str = Field(pattern=r"^[a-z][a-z0-9-]*$", description="codename, e.g. trixie")
    mirror: str = Field(pattern=MIRROR_PATTERN)
    security_mirror: str = Field(pattern=MIRROR_PATTERN)
    security_suite: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    packages: tuple[str, ...] = Field(min_length=1)


class BuildrootStage(Stage):
    own_job: ClassVar[bool] = True
    name: ClassVar[str] = "buildroot"
    version: ClassVar[int] = 1
    Options: ClassVar[type[StageOptions]] = BuildrootOptions
    build_env: ClassVar[bool] = False  # the release is the option; the epoch changes nothing

    def run(self, ctx: StageContext) -> None:
        opts: BuildrootOptions = ctx.options
        if os.geteuid() != 0:
            raise StageFailed(ctx.node, "making a buildroot needs root (debootstrap)",
                              hint="run xenforge as root")
        root = ctx.work / "root"
        try:
            ctx.note(f"debootstrap {opts.release} from {opts.mirror}")
            ctx.run(["debootstrap", "--variant=minbase", "--include=" + ",".join(ESSENTIAL),
                     opts.release, root, opts.mirror], timeout=3600)
        finally:
            if root.exists():  # debootstrap mounts /proc and /sys while it works
                leftovers.release(root)
        (root / "etc/apt/sources.list").write_text(
            f"deb {opts.mirror} {opts.release} main\n"
            f"deb {opts.security_mirror} {opts.security_suite} main\n")
        apt = ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-q",
               "-o", "APT::Sandbox::User=root"]
        self._inside(ctx, root, [*apt, "update"])
        self._inside(ctx, root, [*apt, "install", "-y", "--no-install-recommends",
                                 *opts.packages])
        self._inside(ctx, root, [*apt, "clean"])
        listing = self._inside(ctx, root, ["dpkg-query", "-W",
                                           "-f", "${Package}\\t${Version}\\n"]).stdout
        for leftover in ("var/lib/apt/lists", "var/cache/apt", "var/log"):
            shutil.rmtree(root / leftover, ignore_errors=True)
            (root / leftover).mkdir(parents=True, exist_ok=True)
        packages = dict(line.split("\t", 1) for line in listing.splitlines() if "\t" in line)
        missing = [p for p in opts.packages if p.split(":")[0] not in packages]
        if missing:
            raise StageFailed(ctx.node, f"not installed in the buildroot: {', '.join(missing)}",
                              log=ctx.log)
        os.rename(root, ctx.out / "root")
        write_json_atomic(ctx.out / "buildroot.json", {
            "distribution": opts.distribution, "release": opts.release,
            "requested": list(opts.packages), "packages": packages})
        ctx.note(f"buildroot {opts.distribution}/{opts.release}: {len(packages)} packages")

    @staticmethod
    def _inside(ctx: StageContext, root: Path, argv: list[str]) -> Result:
        """Run ``argv`` in the buildroot being made (writable, with the network)."""
        return ctx.run(["bwrap", "--die-with-parent", "--unshare-pid", "--bind", root, "/",
                        "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
                        "--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf", "--", *argv],
                       capture=argv[0] == "dpkg-query", timeout=3600, host=True)


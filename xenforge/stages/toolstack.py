"""The ``toolstack`` stage: build Xen's tools (xl, libxl, xenstored, xenconsoled, the init
scripts and systemd units) from a patched tree, with nothing downloaded.

Inputs: ``tree`` (a tree node: ``tree/`` is the patched Xen source, read only).
Options: ``version`` (the spec's, checked against the tree) and ``configure`` (the spec's
``toolstack.configure`` list, passed to ``./configure``).
Outputs: ``install/`` (``make dist-tools``'s ``dist/install`` tree) and ``build-info.json``.

The build runs in a private copy of the tree with a clean PATH that starts with ccache's
compiler links (``CC="ccache gcc"`` breaks ``tools/firmware``), Debian's ``/usr/bin/python3``
and ``DEB_PYTHON_INSTALL_LAYOUT=deb`` (Python modules go to ``/usr/lib/python3/dist-packages``,
not ``/usr/local``).
"""

from __future__ import annotations

import shutil
from typing import ClassVar

from pydantic import Field, field_validator

from xenforge.core.errors import InputError, XenforgeError
from xenforge.core.files import write_json_atomic
from xenforge.lib.xenconfigure import check_configure_flag
from xenforge.stages.base import Stage, StageContext, StageOptions
from xenforge.stages.xen_common import build_env, check_version, private_copy, xen_tree

#: what a working dom0 toolstack must contain (checked after the build); hvmloader is the
#: firmware loader of HVM guests (libxl hands it Debian's SeaBIOS at run time)
REQUIRED = ("usr/sbin/xl", "usr/sbin/xenstored", "usr/sbin/xenconsoled",
            "usr/lib/xen/boot/hvmloader")

class ToolstackOptions(StageOptions):
    version: str = Field("", description="the spec's Xen version, e.g. 4.17.5; checked "
                         "against the tree ('': take the tree's)")
    configure: tuple[str, ...] = Field(
        (), description="arguments for Xen's ./configure (the spec's toolstack.configure)")

    @field_validator("configure")
    @classmethod
    def _flags(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for flag in value:
            check_configure_flag(flag)
        return value


class ToolstackStage(Stage):
    name: ClassVar[str] = "toolstack"
    version: ClassVar[int] = 1
    Options: ClassVar[type[StageOptions]] = ToolstackOptions
    artifacts: ClassVar[tuple[str, ...]] = ("build-info.json",)
    heavy: ClassVar[bool] = True
    buildroot: ClassVar[bool] = True

    def run(self, ctx: StageContext) -> None:
        opts: ToolstackOptions = ctx.options
        tree = xen_tree(ctx)
        version = check_version(tree, opts.version)
        if not (tree / "configure").is_file():
            raise InputError(f"{tree} has no ./configure",
                             hint="the toolstack needs a full Xen source tree")
        src = private_copy(ctx, tree)
        env = build_env(ctx, ccache_in_path=True)
        env["DEB_PYTHON_INSTALL_LAYOUT"] = "deb"

        ctx.note("configuring the toolstack")
        ctx.run(["./configure", *opts.configure], cwd=src, env=env)
        ctx.note("building the toolstack (make dist-tools)")
        ctx.run(["make", f"-j{max(1, ctx.jobs)}", "dist-tools"], cwd=src, env=env)

        install = src / "dist" / "install"
        missing = [p for p in REQUIRED if not (install / p).exists()]
        if missing:
            raise XenforgeError(
                f"the toolstack build finished but dist/install lacks {', '.join(missing)}",
                hint="check the configure flags in the spec (toolstack.configure) and the log")
        shutil.copytree(install, ctx.out / "install", symlinks=True)
        write_json_atomic(ctx.out / "build-info.json", {
            "version": version,
            "build_id": ctx.node_id[:12],
            "configure": list(opts.configure),
        })

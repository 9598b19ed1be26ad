"""The ``hypervisor`` stage: configure and build the Xen hypervisor from a patched tree.

Inputs: ``tree`` (a tree node: ``tree/`` is the patched Xen source, read only).
Files: ``config`` (a list of Kconfig fragments, merged in that order over the x86_64
defconfig).
Options: ``version`` (the spec's, checked against the tree), ``build_id`` (default: the
first 12 hex digits of the node id) and ``debug``.

Steps: copy the tree below ``work``; ``make defconfig``; write the fragments' settings (and
``CONFIG_DEBUG`` from the ``debug`` option, last) into ``.config``; ``make olddefconfig``;
fail, listing every option Kconfig dropped or changed with the fragment and line that asked
for it; build with ccache. Outputs: ``xen.gz``, ``xen.efi`` (when the toolchain can build
it), ``xen-syms``, ``xen.config`` (the final .config), ``build-info.json``.

The build identifier reaches the binary through ``XEN_BUILD_TAG`` (our patch
0001-xen-build-tag-in-version-and-boot-log.patch): the boot banner reads
``Xen version 4.17.5+<id>``, the log has ``Build tag: <id>`` and ``xl info`` reports
``xen_extra: .5+<id>``. Without that patch the stage falls back to upstream's
``XEN_VENDORVERSION=+<id>`` (same version string, no ``Build tag`` line).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from xenforge.core.errors import InputError
from xenforge.core.files import write_json_atomic
from xenforge.lib import kconfig
from xenforge.lib.kconfig_index import KconfigIndex, check_survived
from xenforge.stages.base import Stage, StageContext, StageOptions
from xenforge.stages.xen_common import (
    build_date,
    build_env,
    check_version,
    private_copy,
    xen_tree,
)

#: XENVER_extraversion is a char[16]: the extra version and its NUL must fit
EXTRAVERSION_MAX = 15
#: ``$(VAR)`` values Xen's Kconfig files use in ``source`` lines, for x86_64
KCONFIG_ENV = {"SRCARCH": "x86", "ARCH": "x86_64"}
BUILD_ID_RE = r"^[A-Za-z0-9._~-]*$"


class HypervisorOptions(StageOptions):
    version: str = Field("", description="the spec's Xen version, e.g. 4.17.5; checked "
                         "against the tree ('': take the tree's)")
    build_id: str = Field(
        "", max_length=12, pattern=BUILD_ID_RE,
        description="identifier compiled into the hypervisor's version ('': node id[:12])")
    debug: bool = Field(False, description="a debug hypervisor (CONFIG_DEBUG=y)")


class HypervisorStage(Stage):
    name: ClassVar[str] = "hypervisor"
    version: ClassVar[int] = 3  # 3: build paths mapped: none in xen-syms, xen.efi
    Options: ClassVar[type[StageOptions]] = HypervisorOptions
    artifacts: ClassVar[tuple[str, ...]] = (
        "xen.gz", "xen.efi", "xen-syms", "xen.config", "build-info.json")
    heavy: ClassVar[bool] = True
    buildroot: ClassVar[bool] = True

    def run(self, ctx: StageContext) -> None:
        opts: HypervisorOptions = ctx.options
        tree = xen_tree(ctx)
        version = check_version(tree, opts.version)
        extraversion = version.split(".", 2)[2] if version.count(".") >= 2 else ""
        extraversion = "." + extraversion if extraversion else ""
        # as much of the node id as fits Xen's 16-byte extra version (".5+" leaves 12,
        # ".4-pre+" 8)
        build_id = opts.build_id or ctx.node_id[:max(6, min(12, EXTRAVERSION_MAX - 1 -
                                                              len(extraversion)))]
        full_extra = f"{extraversion}+{build_id}"
        if len(full_extra) > EXTRAVERSION_MAX:
            raise InputError(
                f"build id {build_id!r} makes the extra version {full_extra!r} longer than "
                f"Xen's {EXTRAVERSION_MAX} characters", hint="use a shorter build_id")

        src = private_copy(ctx, tree)
        xen = src / "xen"
        env = build_env(ctx, ccache_in_path=False)
        date, clock = build_date(ctx.epoch)
        tag_var = "XEN_BUILD_TAG"
        if "XEN_BUILD_TAG" not in (xen / "Makefile").read_text(encoding="utf-8"):
            ctx.note("the tree lacks the XEN_BUILD_TAG patch: using XEN_VENDORVERSION")
            tag_var, build_id_value = "XEN_VENDORVERSION", f"+{build_id}"
        else:
            build_id_value = build_id
        make = ["make", "-C", str(xen), f"-j{max(1, ctx.jobs)}", "CC=ccache gcc",
                f"{tag_var}={build_id_value}", "XEN_WHOAMI=xenforge",
                "XEN_DOMAIN=xenforge.invalid", "XEN_BUILD_HOST=xenforge",
                f"XEN_BUILD_DATE={date}", f"XEN_BUILD_TIME={clock}",
                # the build path (a cache's work dir) out of the binaries' debug info
                f"EXTRA_CFLAGS_XEN_CORE=-ffile-prefix-map={src}=/usr/src/xen"]

        ctx.note("configuring: defconfig + fragments + olddefconfig")
        ctx.run([*make, "defconfig"], env=env)
        requested = self._requested(ctx, opts)
        kconfig.apply_to_config(xen / ".config", requested)
        ctx.run([*make, "olddefconfig"], env=env)
        final = kconfig.read_config(xen / ".config")
        check_survived(requested, final, lambda: KconfigIndex.load(xen, env=KCONFIG_ENV))

        ctx.note(f"building Xen {version} with build id {build_id}")
        ctx.run(make, env=env)

        shutil.copy2(xen / "xen.gz", ctx.out / "xen.gz")
        shutil.copy2(xen / "xen-syms", ctx.out / "xen-syms")
        shutil.copy2(xen / ".config", ctx.out / "xen.config")
        efi = (xen / "xen.efi").is_file()
        if efi:
            shutil.copy2(xen / "xen.efi", ctx.out / "xen.efi")
        else:
            ctx.note("xen.efi was not built (the toolchain cannot make PE binaries)")
        write_json_atomic(ctx.out / "build-info.json", {
            "version": version,
            "build_id": build_id,
            "extraversion": full_extra,
            "full_version": f"{version}+{build_id}",
            "debug": final.get("DEBUG") == "y",
            "efi": efi,
            "compiler": _compile_h(xen, "XEN_COMPILER"),
            "fragments": [s.render() for s in requested.values()],
            "patches": _applied_patches(ctx),
        })

    def _requested(self, ctx: StageContext, opts: HypervisorOptions) -> dict[str, kconfig.Setting]:
        fragments: list[list[kconfig.Setting]] = []
        for path in ctx.file_list("config"):
            fragments.append(kconfig.parse_fragment(path, display=path.name))
        # the debug option: debug=true wins over every fragment; debug=false is only the
        # starting point, so a fragment may still ask for CONFIG_DEBUG=y
        debug = [kconfig.Setting("DEBUG", "y" if opts.debug else "n", "option debug")]
        fragments = [*fragments, debug] if opts.debug else [debug, *fragments]
        requested, overrides = kconfig.merge(fragments)
        for o in overrides:
            ctx.note(o.render())
        return requested



def _applied_patches(ctx: StageContext) -> list[str]:
    """Names of the patches the tree node applied (its ``patches.json``), if it says."""
    path = ctx.input("tree") / "patches.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [str(p.get("name", p)) if isinstance(p, dict) else str(p) for p in data]


def _compile_h(xen: Path, name: str) -> str:
    path = xen / "include" / "xen" / "compile.h"
    if not path.is_file():
        return ""
    m = re.search(rf'^#define {name}\s+"(.*)"$', path.read_text(encoding="utf-8"), re.M)
    return m.group(1) if m else ""

"""What the Xen stages (hypervisor, toolstack) share: a private copy of the patched tree,
the build environment (clean PATH, Debian's python3, ccache), version facts, build-info."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from xenforge.core.errors import InputError
from xenforge.core.run import CLEAN_PATH
from xenforge.stages.base import StageContext

#: Xen's build must not pick up a pyenv/conda python3 (its python3-config confuses configure)
PYTHON = "/usr/bin/python3"
#: ccache's compiler links: the toolstack cannot take CC="ccache gcc" (tools/firmware passes
#: $(CC) unquoted), so ccache comes first in PATH instead
CCACHE_LINKS = "/usr/lib/ccache"


def xen_tree(ctx: StageContext) -> Path:
    """The patched source tree of the ``tree`` input (read only)."""
    tree = ctx.input("tree") / "tree"
    if not (tree / "xen" / "Makefile").is_file():
        raise InputError(f"{tree} is not a Xen source tree (no xen/Makefile)",
                         hint="the tree node must unpack a Xen release or Debian's xen source")
    return tree


def private_copy(ctx: StageContext, tree: Path) -> Path:
    """Copy the input tree below ``ctx.work`` (Xen's build writes into its tree; the input
    is a shared cache object). Builds always run in ``<work>/src`` so that ccache, with
    its base dir at ``<work>``, sees the same relative paths in every build."""
    dst = ctx.work / "src"
    if dst.exists():
        shutil.rmtree(dst)
    ctx.note(f"copying {tree} to {dst}")
    shutil.copytree(tree, dst, symlinks=True)
    return dst


def build_env(ctx: StageContext, *, ccache_in_path: bool) -> dict[str, str]:
    """Variables added to :func:`xenforge.core.run.base_env` for make/configure."""
    env = {
        "PYTHON": PYTHON,
        "CCACHE_DIR": str(ctx.compiler_cache),
        "CCACHE_BASEDIR": str(ctx.work),
        "CCACHE_NOHASHDIR": "1",
        # generated headers are always "too new" for ccache's direct mode otherwise
        "CCACHE_SLOPPINESS": "include_file_mtime,include_file_ctime",
    }
    if ccache_in_path:
        env["PATH"] = f"{CCACHE_LINKS}:{CLEAN_PATH}"
    return env


_VAR_RE = re.compile(r"^export\s+(XEN_VERSION|XEN_SUBVERSION|XEN_EXTRAVERSION)\s*\??=\s*(.*)$")


def xen_version(tree: Path) -> str:
    """The release version of a Xen tree, e.g. ``4.17.5`` (as ``version.sh --full``)."""
    found: dict[str, str] = {}
    for line in (tree / "xen" / "Makefile").read_text(encoding="utf-8").splitlines():
        m = _VAR_RE.match(line.strip())
        if m and m.group(1) not in found:
            found[m.group(1)] = re.sub(r"\$\([^)]*\)", "", m.group(2)).replace(" ", "")
    try:
        return f"{found['XEN_VERSION']}.{found['XEN_SUBVERSION']}{found['XEN_EXTRAVERSION']}"
    except KeyError as exc:
        raise InputError(f"cannot read the Xen version from {tree}/xen/Makefile "
                         f"(no {exc.args[0]} line)") from exc


def check_version(tree: Path, wanted: str) -> str:
    """The tree's Xen version; an error if the spec promised another one."""
    found = xen_version(tree)
    if wanted and wanted != found:
        raise InputError(f"the spec says Xen {wanted} but the source tree is Xen {found}",
                         hint="fix `version:` in the hypervisor spec or pin the right source")
    return found


def build_date(epoch: int) -> tuple[str, str]:
    """XEN_BUILD_DATE and XEN_BUILD_TIME for a SOURCE_DATE_EPOCH (reproducible builds)."""
    t = time.gmtime(epoch)
    return time.strftime("%a %b %d %H:%M:%S UTC %Y", t), time.strftime("%H:%M:%S", t)


def read_build_info(out: Path) -> dict[str, Any]:
    path = out / "build-info.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}",
                         hint="the input node is incomplete; rebuild it") from exc
    return data

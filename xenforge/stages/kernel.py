"""The ``kernel`` stage: build a Linux kernel from a patched tree and Kconfig fragments.

Inputs: ``tree`` (a tree node: ``tree/`` holds the unpacked, patched source; read-only).
Files: ``fragments`` (a list of Kconfig fragments, merged in this order) and, with
``base: file``, ``baseconfig`` (the starting ``.config``).

Steps: link-copy the tree into the work dir (hard links, so nothing is unpacked or copied
and the cached tree is never written) and build out of tree (``O=``); make the base config;
merge the fragments plus the stage's own settings (LOCALVERSION, the build id);
``olddefconfig``; verify that every requested option survived (else fail naming the
fragment, the option and the unmet dependency); build ``bzImage`` and modules with ccache;
install the modules; package with ``make bindeb-pkg``.

Incremental builds (option ``incremental``, on by default): the link copy and kbuild's
output dir persist in the persistent scratch dir ``kbuild`` (``<node>-<key>/``, one per tree
object and kernel), so after a fragment change kbuild recompiles only the files that use a
changed option; ccache covers everything else (a new dir, another kernel). Such a dir is
only a speed-up: it may be deleted whenever no build holds its lock (``<dir>.lock``).

Why a link copy instead of ``make -C <cached tree>``: the compiler sees source paths, and
ccache keys on them. With the source at ``<work>/src`` and ``CCACHE_BASEDIR=<work>``, every
build sees ``../src/...`` whatever the work dir or the tree's cache id, so a build after a
patch or fragment change reuses every object whose inputs did not change.
"""

from __future__ import annotations

import contextlib
import email.utils
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import Field

from xenforge.core.errors import InputError, StageFailed
from xenforge.core.hashing import sha256_json
from xenforge.lib import debpkg, kconfig
from xenforge.lib.kconfig import Setting
from xenforge.lib.kconfig_index import KconfigIndex, check_survived
from xenforge.stages.base import Stage, StageContext, StageOptions

ARCH = "x86_64"
#: ``$(VAR)`` values Linux's Kconfig files use in ``source`` lines, for x86_64
KCONFIG_ENV = {"SRCARCH": "x86", "ARCH": ARCH, "HEADER_ARCH": "x86"}
IMAGE = "arch/x86/boot/bzImage"
STAGE_ORIGIN = "xenforge kernel stage"
BUILD_ID_SYMBOL = "XENFORGE_BUILD_ID"
#: the persistent scratch dir of incremental builds (emptied by `cache gc`)
KBUILD_DIR = "kbuild"
INCOMPLETE = ".xenforge-incomplete"


class KernelOptions(StageOptions):
    base: Literal["tinyconfig", "defconfig", "allnoconfig", "file"] = "tinyconfig"
    localversion: str = Field("", description="LOCALVERSION; default -xenforge-<build id[:8]>")
    build_id: str = Field("", description="CONFIG_XENFORGE_BUILD_ID; default: the node id")
    targets: tuple[str, ...] = ("bzImage", "modules")
    package: bool = Field(True, description="build linux-image/linux-headers .debs")
    incremental: bool = Field(True, description="build in a persistent build dir kept per "
                              "tree and kernel, so that a config change recompiles only "
                              "what it touches (kbuild's own dependency tracking)")
    maintainer: str = Field(description="Maintainer of the .debs, 'Name <address>' (a real "
                            "domain: lintian rejects localhost)")
    distribution: str = Field(description="the .debs' changelog distribution (the target "
                              "release, e.g. bookworm)")
    lintian: bool = Field(True, description="run lintian on the .debs (errors fail)")


def _timestamp(epoch: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


class KernelStage(Stage):
    name = "kernel"
    described = True
    version = 2  # 2: host programs built with mapped paths (objtool in linux-headers)
    Options = KernelOptions
    artifacts = ("vmlinuz", "config", "System.map", "*.deb", "lintian.txt", "build-info.json")
    heavy = True
    buildroot = True

    def run(self, ctx: StageContext) -> None:
        opts: KernelOptions = ctx.options
        tree = ctx.input("tree") / "tree"
        if not (tree / "Makefile").is_file() or not (tree / "Kconfig").is_file():
            raise StageFailed(ctx.node, f"{tree} is not a Linux source tree (no Makefile/Kconfig)",
                              log=ctx.log, hint="the kernel stage's `tree` input must be a tree "
                              "node of a Linux source")
        fragments = self._fragments(ctx)
        build_id = opts.build_id or ctx.node_id
        localversion = opts.localversion or f"-xenforge-{build_id[:8]}"

        with self._build_root(ctx, fragments) as root:
            self._build(ctx, tree, root, fragments, build_id, localversion)

    def _build(self, ctx: StageContext, tree: Path, root: Path,
               fragments: list[tuple[Path, list[Setting]]], build_id: str,
               localversion: str) -> None:
        opts: KernelOptions = ctx.options
        src, build = root / "src", root / "build"
        self._link_tree(ctx, tree, src)
        build.mkdir(parents=True, exist_ok=True)
        env = self._env(ctx, root)
        make = ["make", "-C", str(src), f"O={build}", f"ARCH={ARCH}", f"-j{ctx.jobs}",
                "CC=ccache gcc", "HOSTCC=ccache gcc",
                # host programs (objtool is built with -g) carry no path of this build dir
                f"HOSTCFLAGS=-ffile-prefix-map={root}=/usr/src/linux-xenforge"]

        # -- configuration ---------------------------------------------------------------
        index = KconfigIndex.load(src, env=KCONFIG_ENV)
        if opts.base == "file":
            base = ctx.file("baseconfig")
            if base is None or not base.is_file():
                raise InputError("base: file needs a base config file (files label "
                                 "`baseconfig`)", where=f"stage {ctx.node}")
            shutil.copyfile(base, build / ".config")
        else:
            ctx.run([*make, opts.base], env=env)
        stage_settings = [Setting("LOCALVERSION", kconfig.quote(localversion), STAGE_ORIGIN),
                          Setting("LOCALVERSION_AUTO", "n", STAGE_ORIGIN)]
        if index.known(BUILD_ID_SYMBOL):
            stage_settings.append(Setting(BUILD_ID_SYMBOL, kconfig.quote(build_id), STAGE_ORIGIN))
        else:
            ctx.note(f"the tree defines no {BUILD_ID_SYMBOL} (the build-id patch is not in "
                     "the series): the build id is recorded in build-info.json only")
        requested, overrides = kconfig.merge([*(s for _, s in fragments), stage_settings])
        for o in overrides:
            ctx.note(o.render())
        kconfig.apply_to_config(build / ".config", requested)
        ctx.run([*make, "olddefconfig"], env=env)
        final = kconfig.read_config(build / ".config")
        check_survived(requested, final, lambda: index)
        ctx.note(f"all {len(requested)} requested options survived olddefconfig")

        # -- build -----------------------------------------------------------------------
        targets = list(opts.targets)
        modules = final.get("MODULES") == "y"
        if not modules and "modules" in targets:
            targets.remove("modules")
        t0 = time.monotonic()
        ctx.run([*make, *targets], env=env)
        release = ctx.run([*make, "-s", "kernelrelease"], env=env, capture=True).stdout.strip()
        ctx.note(f"built {release} in {time.monotonic() - t0:.0f}s")

        out = ctx.out
        shutil.copyfile(build / IMAGE, out / "vmlinuz")
        shutil.copyfile(build / ".config", out / "config")
        shutil.copyfile(build / "System.map", out / "System.map")
        if modules:
            ctx.run([*make, f"INSTALL_MOD_PATH={out / 'modules'}", "INSTALL_MOD_STRIP=1",
                     "modules_install"], env=env)
            for link in ("build", "source"):  # they point into the work dir
                (out / "modules" / "lib" / "modules" / release / link).unlink(missing_ok=True)
        debs = self._package(ctx, make, env, release, root) if opts.package else []
        info = {
            "kernelrelease": release,
            "build_id": build_id,
            "localversion": localversion,
            "arch": ARCH,
            "base": opts.base,
            "fragments": [kconfig.display_path(path) for path, _ in fragments],
            "requested_options": len(requested),
            "modules": modules,
            "debs": debs,
        }
        (out / "build-info.json").write_text(json.dumps(info, indent=2) + "\n")

    # -- helpers ---------------------------------------------------------------------------
    def _fragments(self, ctx: StageContext) -> list[tuple[Path, list[Setting]]]:
        """The fragment files with their settings, in merge order."""
        frags = []
        for path in ctx.file_list("fragments"):
            if not path.is_file():
                raise InputError(f"Kconfig fragment not found: {path}", where=f"stage {ctx.node}")
            frags.append((path, kconfig.parse_fragment(path)))
        return frags

    @contextlib.contextmanager
    def _build_root(self, ctx: StageContext,
                    fragments: list[tuple[Path, list[Setting]]]) -> Iterator[Path]:
        """Where ``src/`` (the link copy) and ``build/`` (kbuild's O=) live.

        With ``incremental``: a persistent dir below ``<cache>/kbuild/``, one per tree object
        and kernel (node name and fragment file names), so the next build of that kernel
        after a fragment change lets kbuild recompile only the files whose options changed.
        The source is the same tree object (same content), so kbuild's mtime checks are
        sound. A dir in use by another build (lock) means a fresh one in the work dir; a
        dir whose last compile did not finish (marker) is wiped first.
        Otherwise (or as the fallback): ``ctx.work``, removed after the build.
        """
        opts: KernelOptions = ctx.options
        if not opts.incremental:
            yield ctx.work
            return
        key = sha256_json({"tree": str(ctx.input("tree").resolve()), "node": ctx.node,
                           "base": opts.base,
                           "fragments": [path.name for path, _ in fragments]})
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", ctx.node) + "-" + key[:16]
        root = ctx.persistent(KBUILD_DIR) / name
        root.parent.mkdir(parents=True, exist_ok=True)
        with open(root.with_name(name + ".lock"), "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                ctx.note(f"{root} is in use by another build: building in {ctx.work}")
                yield ctx.work
                return
            marker = root / INCOMPLETE
            if marker.exists():
                ctx.note(f"{root}: the last build there did not finish; starting afresh")
                shutil.rmtree(root)
            root.mkdir(parents=True, exist_ok=True)
            os.utime(root)  # last use, for cleaning up old dirs
            ctx.note(f"incremental build dir: {root}")
            marker.touch()
            try:
                yield root
            except (StageFailed, InputError):
                # refused inputs (a dropped option, a bad fragment): nothing was compiled
                marker.unlink(missing_ok=True)
                raise
            # a failed or interrupted compile leaves the marker: the next build starts afresh
            marker.unlink(missing_ok=True)

    def _link_tree(self, ctx: StageContext, tree: Path, src: Path) -> None:
        """A copy of the tree made of hard links (symlinks across filesystems): instant,
        and the cached tree is only ever read."""
        if src.exists():
            shutil.rmtree(src)
        src.parent.mkdir(parents=True, exist_ok=True)
        same_fs = os.stat(tree).st_dev == os.stat(src.parent).st_dev
        # on the host: a hard link may not cross the buildroot sandbox's bind mounts
        ctx.run(["cp", "-al" if same_fs else "-as", str(tree.absolute()), str(src)], host=True)

    def _env(self, ctx: StageContext, root: Path) -> dict[str, str]:
        env = {
            "CCACHE_DIR": str(ctx.compiler_cache),
            "CCACHE_BASEDIR": str(root),
            "CCACHE_NOHASHDIR": "1",
            "KBUILD_BUILD_USER": "xenforge",
            "KBUILD_BUILD_HOST": "xenforge",
            "KBUILD_BUILD_VERSION": "1",
        }
        env["KBUILD_BUILD_TIMESTAMP"] = _timestamp(ctx.epoch)
        return env

    def _package(self, ctx: StageContext, make: list[str], env: dict[str, str],
                 release: str, root: Path) -> list[str]:
        opts: KernelOptions = ctx.options
        """``make bindeb-pkg`` on the built tree: linux-image (and linux-headers) .debs."""
        name, address = email.utils.parseaddr(opts.maintainer)
        pkg_env = {
            **env,
            "KDEB_PKGVERSION": f"{release}-1",
            "KDEB_SOURCENAME": "linux-xenforge",
            "KDEB_CHANGELOG_DIST": opts.distribution,
            # mkdebian writes "$DEBFULLNAME <$DEBEMAIL>" (6.12; 6.1 also took a whole
            # "Name <address>" in DEBEMAIL): give it the two parts
            "DEBFULLNAME": name or "xenforge",
            "DEBEMAIL": address,
            "INSTALL_MOD_STRIP": "1",
            # dpkg-deb's default xz takes most of the packaging time; gzip is ~5x faster
            "KDEB_COMPRESS": "gzip",
        }
        for old in (*root.glob("*.deb"), *root.glob("*.buildinfo"), *root.glob("*.changes")):
            old.unlink()
        ctx.run([*make, "DPKG_FLAGS=-d", "bindeb-pkg"], env=pkg_env)
        debs = []
        for deb in sorted(root.glob("*.deb")):
            if deb.name.startswith("linux-libc-dev_"):
                ctx.note(f"not kept: {deb.name} (it would replace Debian's libc headers)")
                continue
            shutil.copyfile(deb, ctx.out / deb.name)
            debs.append(deb.name)
        image = [d for d in debs if d.startswith(f"linux-image-{release}_")]
        if not image:
            raise StageFailed(ctx.node, f"bindeb-pkg made no linux-image-{release} package "
                              f"(made: {', '.join(debs) or 'nothing'})", log=ctx.log)
        listing = ctx.run(["dpkg-deb", "-c", str(ctx.out / image[0])], capture=True).stdout
        wants = [[f"./boot/vmlinuz-{release}"]]
        if (ctx.out / "modules").is_dir():  # below /usr (a merged-/usr target's patch) or not
            wants.append([f"./usr/lib/modules/{release}/", f"./lib/modules/{release}/"])
        for want in wants:
            if not any(w in listing for w in want):
                raise StageFailed(ctx.node, f"{image[0]} lacks {want[0]}", log=ctx.log)
        if opts.lintian:
            self._lintian(ctx, debs)
        return debs

    @staticmethod
    def _lintian(ctx: StageContext, debs: list[str]) -> None:
        """lintian (the target's) on every package: errors fail the stage, as for Xen's."""
        lines: list[str] = []
        errors: list[str] = []
        for name in debs:
            report = debpkg.lintian(ctx.out / name, run=ctx.run)
            lines.append(f"== {name}: {len(report.errors)} error(s), "
                         f"{len(report.warnings)} warning(s)")
            lines.extend(report.text.splitlines())
            errors.extend(f"{name}: {e}" for e in report.errors)
        (ctx.out / "lintian.txt").write_text("\n".join(lines) + "\n")
        if errors:
            contact = any(tag in e for e in errors
                          for tag in ("bogus-mail-host", "malformed-contact", "mail-address"))
            raise StageFailed(ctx.node, f"lintian found {len(errors)} error(s):\n  "
                              + "\n  ".join(errors), log=ctx.log,
                              hint="a Maintainer needs a real mail domain (the recipe's "
                              "`maintainer:`)" if contact else
                              "the kernel's own packaging (scripts/package) is fixed by a "
                              "patch in the line's series (kernel_patches/<line>/); "
                              "the lintian report is lintian.txt")

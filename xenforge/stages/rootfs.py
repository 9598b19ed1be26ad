"""The ``rootfs`` stage: a root filesystem built with diskimage-builder.

Inputs: ``repo`` (optional, *late*: an ``apt-repo`` node with the xenforge packages the
rootfs installs - its kernel, for a dom0 also the hypervisor and toolstack). Files:
``elements`` (the folders of xenforge's ``image_elements`` the build uses, see
:mod:`xenforge.lib.elements`).

How: diskimage-builder makes the root filesystem - one ext4 filesystem on a loop device, no
partitions (its own partitioning needs device-mapper, which many hosts and CI runners lack) -
from ``debian-minimal`` plus xenforge's elements, with an explicit environment (every
``DIB_*`` variable is set here; nothing is inherited).

Overlap with the compiles: the repository is a late input. The node starts as soon as the
build does; debootstrap and every element's work run while the kernel still compiles, and
only the ``xenforge-apt-repo`` element's post-install step waits for the packages. The
stage delivers them when the ``repo`` node finishes: the element tells where (its hooks
folder, through the file ``XENFORGE_APT_REPO_HANDOFF``), the stage copies the repository
there, the element installs it (see ``image_elements/xenforge-apt-repo/README.rst``).

Consumers: a guest's rootfs *is* its disk (``/dev/xvda``; the kernel and initramfs next to it
start the guest directly); a dom0's rootfs becomes a bootable disk in the ``disk`` stage (and
an ISO's squashfs), which adds what depends on the machine: command lines, partitions,
guests. So a changed ``dom0_mem`` or guest never reruns diskimage-builder.

Outputs: ``<name>.ext4`` (the filesystem), ``vmlinuz``/``initrd.img`` (the newest kernel and
its initramfs), ``xen*.gz`` (dom0: the hypervisors in /boot), ``access_key``(``.pub``) when
``access`` is on, ``<name>.tar`` when ``tarball`` is on, and ``image-info.json`` (what is in
it: every package with its version, the xenforge packages checked against the repository,
kernel, hypervisors, filesystem UUID, size and use, os-release, timings).

Loop devices, mounts and chroot processes are released on every exit path (see
:mod:`xenforge.core.leftovers`); diskimage-builder's debootstrap tarball and apt downloads are
kept per image name in the persistent scratch dir ``dib``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import Field

from xenforge.core import leftovers
from xenforge.core.errors import InputError, StageFailed, XenforgeError
from xenforge.core.files import file_lock, write_json_atomic
from xenforge.core.run import CLEAN_PATH
from xenforge.lib.elements import rootfs_elements
from xenforge.lib.ext4 import Ext4Image
from xenforge.limits import MAX_IMAGE_MIB, MIN_ROOTFS_MIB
from xenforge.stages.base import Stage, StageContext, StageOptions

#: passed through to diskimage-builder when set (apt and debootstrap honour them)
PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy")
#: how long the element waits for the packages at most (the compile they come from)
REPO_WAIT_SECONDS = 6 * 3600
#: the hooks sub-folder the repository is delivered to (see the xenforge-apt-repo element)
REPO_DROP = "xenforge-apt-repo"
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
#: the console line of a booted machine of each role (the xen-dom0 / xen-domu elements)
READY_MARKERS = {"dom0": "XENFORGE-REPORT-END", "guest": "XENFORGE-GUEST-READY"}


class RootfsOptions(StageOptions):
    name: str = Field(pattern=NAME_PATTERN, description="the image's name (files, label)")
    role: Literal["dom0", "guest"]
    release: str = Field(description="Debian release, e.g. bookworm")
    mirror: str
    security_mirror: str
    elements: tuple[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")], ...] = ()
    packages: tuple[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9+.-]+$")], ...] = ()
    size: int | None = Field(None, ge=MIN_ROOTFS_MIB, le=MAX_IMAGE_MIB,
                             description="MiB of the filesystem (None: "
                             "diskimage-builder's estimate, for a rootfs a disk will grow)")
    access: bool = False
    access_user: str = Field(pattern=r"^[a-z_][a-z0-9_-]*$")
    bridge: str = Field(description="dom0: the bridge for guests")
    hostname: str = Field(pattern=NAME_PATTERN)
    tarball: bool = Field(False, description="also a tar of the tree (for a squashfs)")


def fs_ids(node_id: str, name: str) -> dict[str, str]:
    """Filesystem UUID and label, derived from the node id (reproducible)."""
    fs_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"xenforge:{node_id}:{name}:rootfs"))
    return {"fs_uuid": fs_uuid, "label": f"xf-{name}"[:16]}


def block_device_config(label: str, fs_uuid: str) -> str:
    """diskimage-builder's block-device config: one ext4 filesystem on a loop device."""
    config = [
        {"local_loop": {"name": "image0"}},
        {"mkfs": {"name": "root", "base": "image0", "type": "ext4", "label": label,
                  "uuid": fs_uuid, "opts": "-i 16384 -O ^metadata_csum_seed"}},
        {"mount": {"name": "mount_root", "base": "root", "mount_point": "/",
                   "fstab": {"options": "defaults,errors=remount-ro", "fsck-passno": 1}}},
    ]
    return yaml.safe_dump(config, sort_keys=False)


def disk_image_create() -> Path:
    here = Path(sys.executable).parent / "disk-image-create"
    if here.exists():
        return here
    found = shutil.which("disk-image-create")
    if found is None:
        raise StageFailed("rootfs", "disk-image-create (diskimage-builder) not found",
                          hint="install xenforge with its dependencies (ci/setup-host.sh)")
    return Path(found)


class RootfsStage(Stage):
    own_job: ClassVar[bool] = True
    repro_note: ClassVar[str] = (
        "diskimage-builder installs the packages with the clock of the build: file times "
        "inside the ext4 image, apt and dpkg logs and the initramfs are not yet normalised "
        "to SOURCE_DATE_EPOCH; the access key is made anew by each build (random by "
        "design: a key derived from the recipe would be known to everyone who has it)")
    name: ClassVar[str] = "rootfs"
    described = True
    version: ClassVar[int] = 1
    Options: ClassVar[type[StageOptions]] = RootfsOptions
    artifacts: ClassVar[tuple[str, ...]] = ("*.ext4", "vmlinuz", "initrd.img", "access_key",
                                            "access_key.pub", "image-info.json")
    late_inputs: ClassVar[tuple[str, ...]] = ("repo",)

    def run(self, ctx: StageContext) -> None:
        opts: RootfsOptions = ctx.options
        if os.geteuid() != 0:
            raise InputError("building a root filesystem needs root (loop devices, mounts, "
                             "chroot)", hint="run xenforge as root, e.g. sudo xenforge build ...")
        if not ctx.file_list("elements"):
            raise ctx.planner_bug("the rootfs stage needs its image_elements folders")
        started = time.monotonic()
        ids = fs_ids(ctx.node_id, opts.name)
        export = ctx.work / "export"
        handoff = ctx.work / "repo-handoff"
        env = self._env(ctx, opts, ids, export, handoff)
        if opts.access:
            env["XENFORGE_ACCESS_PUBKEY"] = self._access_key(ctx, opts)
        elements = rootfs_elements(opts.role, opts.access, opts.elements)

        dib_out = ctx.work / "dib-out"
        dib_out.mkdir(parents=True, exist_ok=True)
        argv: list[str | Path] = [disk_image_create(), "-a", "amd64", "-o",
                                  dib_out / opts.name, "-t", "raw,tar" if opts.tarball else "raw",
                                  "--no-tmpfs"]
        if opts.size is not None:
            argv += ["--image-size", f"{opts.size / 1024:.10f}"]
        if opts.packages:
            argv += ["-p", ",".join(opts.packages)]
        argv += elements
        ctx.note(f"rootfs {opts.name}: elements {' '.join(elements)}")
        dib_tmp = Path(env["TMP_DIR"])
        dib_tmp.mkdir(parents=True, exist_ok=True)
        delivery = _Delivery(ctx, handoff) if ctx.has_input("repo") else None
        t0 = time.monotonic()
        try:
            # one build of this image name at a time uses its diskimage-builder caches
            with file_lock(Path(env["DIB_IMAGE_CACHE"]).with_suffix(".lock")):
                if delivery is not None:
                    delivery.start()
                ctx.run(argv, env=env, cwd=ctx.work,
                        cancel=delivery.failed if delivery is not None else None)
        except XenforgeError:
            if delivery is not None and delivery.error is not None:
                raise delivery.error from None  # the repo's node failed: say that, not "killed"
            raise
        finally:
            if delivery is not None:
                delivery.stop()
            released = leftovers.release(dib_tmp)
            if released:
                ctx.note(f"rootfs {opts.name}: released leftovers: {released.summary()}")
        dib_seconds = time.monotonic() - t0
        waited = _idle_seconds(ctx.log) if delivery is not None else 0.0
        ctx.idle += waited
        fs = dib_out / f"{opts.name}.raw"
        if not fs.is_file():
            raise StageFailed(ctx.node, f"diskimage-builder made no {fs.name}", log=ctx.log)
        os.replace(fs, ctx.out / f"{opts.name}.ext4")
        if opts.tarball:
            os.replace(dib_out / f"{opts.name}.tar", ctx.out / f"{opts.name}.tar")
        boot = export / "boot"
        for name in ("vmlinuz", "initrd.img"):
            if (boot / name).is_file():
                shutil.copyfile(boot / name, ctx.out / name)
        for xen in sorted(boot.glob("xen*.gz")):
            shutil.copyfile(xen, ctx.out / xen.name)

        info = self._info(ctx, opts, ids, export, elements)
        info["seconds"] = {"diskimage_builder": round(dib_seconds, 1),
                           "waited_for_packages": round(waited, 1),
                           "total": round(time.monotonic() - started, 1)}
        write_json_atomic(ctx.out / "image-info.json", info)
        ctx.note(f"rootfs {opts.name}: {info['fs']['size'] >> 20} MiB filesystem, "
                 f"{info['fs']['used'] >> 20} MiB used; waited {waited:.0f}s for the packages")

    # -- helpers ---------------------------------------------------------------------------
    def _env(self, ctx: StageContext, opts: RootfsOptions, ids: dict[str, str], export: Path,
             handoff: Path) -> dict[str, str]:
        dib_cache = ctx.persistent("dib") / opts.name
        (dib_cache / "lockfiles").mkdir(parents=True, exist_ok=True)
        venv_bin = disk_image_create().parent
        env = {
            "PATH": f"{venv_bin}:{CLEAN_PATH}",
            "ELEMENTS_PATH": str(self._elements(ctx)),
            # DIB's mktemp -t prefers TMPDIR over TMP_DIR: both, so that every mount and
            # loop file of the build lies below the work dir (see xenforge.core.leftovers)
            "TMP_DIR": str(ctx.work / "dib-tmp"),
            "TMPDIR": str(ctx.work / "dib-tmp"),
            "DIB_PYTHON_EXEC": sys.executable,
            "DIB_RELEASE": opts.release,
            "DIB_DISTRIBUTION_MIRROR": opts.mirror,
            "DIB_DEBIAN_SECURITY_MIRROR": opts.security_mirror,
            "DIB_DEBIAN_COMPONENTS": "main",
            "DIB_IMAGE_CACHE": str(dib_cache),
            "DIB_LOCKFILES": str(dib_cache / "lockfiles"),
            "DIB_DEBOOTSTRAP_CACHE": "1",
            "DIB_DEBIAN_USE_DEBOOTSTRAP_CACHE": "1",
            "DIB_APT_LOCAL_CACHE": "1",
            "DIB_NO_TMPFS": "1",
            "DIB_BLOCK_DEVICE_CONFIG": block_device_config(ids["label"], ids["fs_uuid"]),
            "DIB_CHECKSUM": "0",
            "DIB_DEBUG_TRACE": "0",
            "DIB_NO_TIMESTAMP": "0",
            "DIB_QUIET": "0",
            "DIB_SHOW_IMAGE_USAGE": "0",
            "DIB_OPENSSH_SERVER_HARDENING": "1",
            "XENFORGE_APT_REPO": "",
            "XENFORGE_APT_REPO_WAIT": "0",
            "XENFORGE_APT_REPO_HANDOFF": "",
            "XENFORGE_APT_REPO_HOST_PID": str(os.getpid()),
            "XENFORGE_APT_PACKAGES": "",
            "XENFORGE_APT_REPO_KEEP": "0",
            "XENFORGE_REPLACE_DEBIAN_KERNEL": "1",
            "XENFORGE_EXPORT_DIR": str(export),
            "XENFORGE_HOSTNAME": opts.hostname,
            "XENFORGE_ROOT_FS_UUID": ids["fs_uuid"],
            "XENFORGE_BRIDGE": opts.bridge,
            "XENFORGE_BOOT_REPORT": "1",
            "XENFORGE_ACCESS_USER": opts.access_user,
            "XENFORGE_ACCESS_PUBKEY": "",
        }
        if ctx.has_input("repo"):
            # delivered by _Delivery into the element's hooks folder when the node is done
            env.update({"XENFORGE_APT_REPO_WAIT": str(REPO_WAIT_SECONDS),
                        "XENFORGE_APT_REPO_HANDOFF": str(handoff)})
        for var in PROXY_VARS:  # the only things taken from the caller's environment
            if os.environ.get(var):
                env[var] = os.environ[var]
        return env

    def _elements(self, ctx: StageContext) -> Path:
        """A private copy of the node's elements (the folders its id was computed from: an
        edit while diskimage-builder runs changes nothing; an element the node does not list
        is not there to be used). Hook scripts are made executable (a wheel's installer may
        have dropped the bits)."""
        copy = ctx.work / "elements"
        if not copy.exists():
            staging = ctx.work / "elements.tmp"
            leftovers.remove_tree(staging)
            for source in ctx.file_list("elements"):
                shutil.copytree(source, staging / source.name, symlinks=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            os.replace(staging, copy)
            for hook in copy.glob("*/*.d/*"):
                if hook.is_file() and hook.parent.name != "environment.d":
                    hook.chmod(0o755)
            for tool in copy.glob("*/bin/*"):
                tool.chmod(0o755)
        return copy

    def _access_key(self, ctx: StageContext, opts: RootfsOptions) -> str:
        key = ctx.out / "access_key"
        ctx.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                 f"xenforge-access@{opts.name}", "-f", key])
        key.chmod(0o600)
        return key.with_suffix(".pub").read_text().strip()

    def _info(self, ctx: StageContext, opts: RootfsOptions, ids: dict[str, str], export: Path,
              elements: list[str]) -> dict[str, Any]:
        packages: dict[str, str] = {}
        tsv = export / "packages.tsv"
        if tsv.is_file():
            for line in tsv.read_text().splitlines():
                name, version, _arch = ([*line.split("\t"), "", ""])[:3]
                packages[name] = version
        xenforge_pkgs = []
        if ctx.has_input("repo"):
            repo = json.loads((ctx.input("repo") / "repo.json").read_text())
            for p in repo["packages"]:
                installed = packages.get(p["name"])
                if installed is not None and installed != p["version"]:
                    raise StageFailed(ctx.node, f"the image has {p['name']} {installed}, not "
                                      f"the xenforge-built {p['version']}", log=ctx.log,
                                      hint="the apt pin on the local repository did not win")
                if installed is None:
                    raise StageFailed(ctx.node, f"{p['name']} from the local repository is not "
                                      "installed in the image", log=ctx.log,
                                      hint="see the xenforge-apt-repo lines in the log")
                xenforge_pkgs.append({"name": p["name"], "version": p["version"],
                                      "installed": True})
        boot = export / "boot"
        kver = (boot / "kernel-version").read_text().strip() \
            if (boot / "kernel-version").is_file() else None
        fs = ctx.out / f"{opts.name}.ext4"
        info: dict[str, Any] = {
            "name": opts.name, "role": opts.role, "release": opts.release,
            "elements": elements, "extra_packages": list(opts.packages),
            "fs_uuid": ids["fs_uuid"], "fs_label": ids["label"],
            "fs": {"file": fs.name, **_fs_usage(ctx, fs)},
            "kernel_version": kver,
            "initrd": (ctx.out / "initrd.img").is_file(),
            "hypervisors": sorted(p.name for p in ctx.out.glob("xen*.gz")),
            "packages": packages, "xenforge_packages": xenforge_pkgs,
            "os_release": _os_release(export / "os-release"),
            "access_user": opts.access_user if opts.access else None,
            # what the console says once the machine is up: the dom0's boot report (printed
            # after the Xen services and the autostarted guests), a guest's ready line
            "ready_marker": READY_MARKERS[opts.role],
            "bridge": opts.bridge if opts.role == "dom0" else None,
        }
        if opts.role == "guest":
            info["xl"] = {"kernel": "vmlinuz",
                          "ramdisk": "initrd.img" if info["initrd"] else None}
        return info


def _idle_seconds(log: Path) -> float:
    """How long diskimage-builder sat waiting for the packages (the element says, once)."""
    with open(log, encoding="utf-8", errors="replace") as f:
        found = re.findall(r"xenforge-apt-repo: packages delivered after (\d+)s", f.read())
    return float(found[-1]) if found else 0.0


def _fs_usage(ctx: StageContext, fs: Path) -> dict[str, int]:
    """Size, used bytes and block size of an ext4 image (from its superblock)."""
    usage = Ext4Image(fs, log=ctx.log).usage()
    return {"size": usage.size, "used": usage.used, "block_size": usage.block_size,
            "allocated": fs.stat().st_blocks * 512}


def _os_release(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                out[key.strip()] = value.strip().strip('"')
    return out


class _Delivery:
    """Hands the ``repo`` input to the running diskimage-builder once its node finished:
    waits for the node (``ctx.wait_input``) and for the element's handoff file (the host path
    of its hooks folder), then copies the repository there under a temp name and renames it
    (the element waits for the final name). If the node fails, ``failed`` is set, which
    makes the runner stop diskimage-builder."""

    def __init__(self, ctx: StageContext, handoff: Path) -> None:
        self.ctx = ctx
        self.handoff = handoff
        self.failed = threading.Event()  # the runner's cancel event
        self.error: XenforgeError | None = None
        self.waited = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._deliver, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """diskimage-builder ended: a delivery still waiting for the node is dropped."""
        self._done.set()
        self._thread.join(timeout=5)

    def _deliver(self) -> None:
        t0 = time.monotonic()
        try:
            repo = self.ctx.wait_input("repo", idles=False) / "repo"
            self.waited = time.monotonic() - t0
            if self._done.is_set():
                return
            while not self.handoff.is_file():  # diskimage-builder has not reached extra-data
                if self._done.wait(0.5):
                    return
            hooks = Path(self.handoff.read_text().strip())
            if not (hooks.is_dir() and hooks.is_relative_to(self.ctx.work)):
                raise StageFailed(self.ctx.node, f"the xenforge-apt-repo element handed over "
                                  f"{hooks!r}, not a folder below the work dir", log=self.ctx.log)
            tmp = hooks / f".{REPO_DROP}.tmp"
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(tmp)
            shutil.copytree(repo, tmp)
            os.rename(tmp, hooks / REPO_DROP)
            self.ctx.note(f"delivered the packages to {hooks / REPO_DROP} after "
                          f"{self.waited:.0f}s")
        except XenforgeError as exc:
            self.error = exc
            self.failed.set()
        except OSError as exc:
            self.error = StageFailed(self.ctx.node, f"could not deliver the packages: {exc}",
                                     log=self.ctx.log)
            self.failed.set()

"""The ``image`` stage: a bootable dom0 disk or a guest disk, built with diskimage-builder.

Inputs: ``repo`` (an ``apt-repo`` node: the xenforge packages this image installs) and, for a
dom0 image with guests, ``guest0``, ``guest1``, ... (``image`` nodes with role guest, in the
order of ``options.guests``). Files: ``elements`` (xenforge's ``image_elements`` folder).

How: diskimage-builder makes the root filesystem - one ext4 filesystem on a loop device, no
partitions (its own partitioning needs device-mapper, which many hosts and CI runners lack) -
from ``debian-minimal`` plus xenforge's elements, with an explicit environment (every
``DIB_*`` variable is set here; nothing is inherited). Then:

- role ``guest``: that filesystem *is* the disk (``root=/dev/xvda``); the kernel and
  initramfs are exported next to it for the dom0 that will start the guest directly;
- role ``dom0``: :mod:`xenforge.disk` assembles a GPT disk around it, bootable by BIOS and/or
  UEFI, without loop devices or mounts.

Outputs: ``<name>.raw`` (always for guests: dom0 images embed it), ``<name>.qcow2`` when
asked, ``vmlinuz``/``initrd.img`` (guests), ``access_key``/``access_key.pub`` when
``access`` is on, and ``image-info.json`` (what is in the image: every package with its
version, the xenforge packages checked against the repository, kernel, hypervisor, disk
layout, sizes, timings).

Loop devices, mounts and chroot processes are released on every exit path (see
:mod:`xenforge.leftovers`); diskimage-builder's debootstrap tarball and apt downloads are
cached below the cache root (``dib/``) across builds.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from xenforge.core import leftovers
from xenforge.core.errors import InputError, StageFailed
from xenforge.core.run import CLEAN_PATH
from xenforge.lib import gptdisk as disk
from xenforge.recipe.types import TscMode
from xenforge.stages.base import Stage, StageContext, StageOptions

#: elements every image of a role gets (the recipe's ``elements`` come after them)
ROLE_ELEMENTS: dict[str, tuple[str, ...]] = {
    "dom0": ("debian-minimal", "openssh-server", "xen-dom0", "xenforge-boot",
             "xenforge-export"),
    "guest": ("debian-minimal", "openssh-server", "xen-domu", "xenforge-export"),
}
#: passed through to diskimage-builder when set (apt and debootstrap honour them)
PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy")
#: what a dom0 root filesystem needs besides its guests (MiB), for the early size check
DOM0_BASE_MIB = 1536


class GuestEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    type: Literal["pv", "pvh"]
    memory: int = Field(512, ge=64)
    vcpus: int = Field(1, ge=1)
    autostart: bool = False
    bridge: str = "xenbr0"
    #: xl's tsc_mode; "native" where the (emulated) CPU has no invariant TSC, e.g. QEMU TCG,
    #: on which Xen's RDTSC(P) emulation fails for PVH guests
    tsc_mode: TscMode = "default"
    #: xl's hap: False = shadow paging for PVH guests (QEMU TCG's emulated nested paging
    #: triple-faults them); ignored by PV guests
    hap: bool = True


class ImageOptions(StageOptions):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    role: Literal["dom0", "guest"]
    release: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    security_mirror: str = "http://deb.debian.org/debian-security"
    elements: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()
    size: int = Field(4096, ge=512, description="MiB of the whole disk")
    formats: tuple[Literal["raw", "qcow2"], ...] = ("qcow2",)
    firmware: tuple[Literal["bios", "uefi"], ...] = ("bios",)
    access: bool = False
    xen_cmdline: str = "console=com1 com1=115200 dom0_mem=1024M,max:1024M"
    kernel_cmdline: str = "console=hvc0"
    guests: tuple[GuestEntry, ...] = ()
    hostname: str = ""
    esp_size: int = Field(64, ge=33, description="MiB of the EFI system partition")
    qcow2_compress: bool = True


def _ids(node_id: str, name: str) -> dict[str, str]:
    def make(tag: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"xenforge:{node_id}:{name}:{tag}"))

    return {"fs_uuid": make("rootfs"), "root_partuuid": make("root-partition"),
            "label": f"xf-{name}"[:16]}


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


def xl_config(g: GuestEntry, guest_info: dict[str, Any]) -> str:
    """The ``xl`` config of a guest started with its kernel given directly."""
    base = f"/var/lib/xen/images/{g.name}"
    xl = guest_info.get("xl", {})
    lines = [
        f"# {g.name}: written by xenforge from the recipe's guests entry",
        f'name = "{g.name}"',
        f'type = "{g.type}"',
        f'kernel = "{base}/vmlinuz"',
    ]
    if xl.get("ramdisk"):
        lines.append(f'ramdisk = "{base}/initrd.img"')
    lines += [
        f'cmdline = "{xl.get("cmdline", "root=/dev/xvda ro console=hvc0")}"',
        f"memory = {g.memory}",
        f"vcpus = {g.vcpus}",
        *([f'tsc_mode = "{g.tsc_mode}"'] if g.tsc_mode != "default" else []),
        *(["hap = 0"] if g.type == "pvh" and not g.hap else []),
        f'disk = [ "format=raw, vdev=xvda, access=rw, target={base}/disk.raw" ]',
        f'vif = [ "bridge={g.bridge}" ]',
        'on_crash = "preserve"',
    ]
    return "\n".join(lines) + "\n"


def _allocated_mib(path: Path) -> int:
    return (path.stat().st_blocks * 512) // (1 << 20)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def disk_image_create() -> Path:
    here = Path(sys.executable).parent / "disk-image-create"
    if here.exists():
        return here
    found = shutil.which("disk-image-create")
    if found is None:
        raise StageFailed("image", "disk-image-create (diskimage-builder) not found",
                          hint="install xenforge with its dependencies (ci/setup-host.sh)")
    return Path(found)


class ImageStage(Stage):
    name: ClassVar[str] = "image"
    version: ClassVar[int] = 1
    Options: ClassVar[type[StageOptions]] = ImageOptions
    artifacts: ClassVar[tuple[str, ...]] = ("*.raw", "*.qcow2", "vmlinuz", "initrd.img",
                                            "access_key", "access_key.pub", "image-info.json")
    heavy: ClassVar[bool] = True

    def run(self, ctx: StageContext) -> None:
        opts: ImageOptions = ctx.options
        self._check(ctx, opts)
        started = time.monotonic()
        ids = _ids(ctx.node_id, opts.name)
        overhead = disk.overhead_mib(opts.firmware, opts.esp_size) if opts.role == "dom0" else 0
        root_mib = opts.size - overhead
        export = ctx.work / "export"
        env = self._env(ctx, opts, ids, root_mib, export)
        if opts.access:
            env["XENFORGE_ACCESS_PUBKEY"] = self._access_key(ctx, opts)
        guest_infos = self._stage_guests(ctx, opts, root_mib, env)
        elements = [*ROLE_ELEMENTS[opts.role]]
        if opts.guests:
            elements.append("xenforge-guests")
        if opts.access:
            elements.append("xenforge-access")
        elements += [e for e in opts.elements if e not in elements]

        dib_out = ctx.work / "dib-out"
        dib_out.mkdir(parents=True, exist_ok=True)
        argv: list[str | Path] = [disk_image_create(), "-a", "amd64", "-o",
                                  dib_out / opts.name, "-t", "raw", "--no-tmpfs",
                                  "--image-size", f"{root_mib / 1024:.10f}"]
        if opts.packages:
            argv += ["-p", ",".join(opts.packages)]
        argv += elements
        ctx.note(f"image {opts.name}: elements {' '.join(elements)}")
        dib_tmp = Path(env["TMP_DIR"])
        dib_tmp.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        try:
            with _file_lock(ctx.cache.root / "dib" / "xenforge-dib.lock"):
                ctx.run(argv, env=env, cwd=ctx.work)
        finally:
            released = leftovers.release(dib_tmp)
            if released:
                ctx.note(f"image {opts.name}: released leftovers: {released.summary()}")
        dib_seconds = time.monotonic() - t0
        rootfs = dib_out / f"{opts.name}.raw"
        if not rootfs.is_file():
            raise StageFailed(ctx.node, f"diskimage-builder made no {rootfs.name}", log=ctx.log)

        t1 = time.monotonic()
        layout: disk.DiskLayout | None = None
        raw = ctx.out / f"{opts.name}.raw"
        if opts.role == "dom0":
            layout = disk.assemble(rootfs, raw, ctx.work / "disk", fs_uuid=ids["fs_uuid"],
                                   firmware=opts.firmware, seed=f"{ctx.node_id}:{opts.name}",
                                   root_guid=ids["root_partuuid"], esp_mib=opts.esp_size,
                                   log=ctx.log)
            rootfs.unlink()
        else:
            os.replace(rootfs, raw)
            for name in ("vmlinuz", "initrd.img"):
                if (export / "boot" / name).is_file():
                    shutil.copyfile(export / "boot" / name, ctx.out / name)
        if "qcow2" in opts.formats:
            compress = ["-c"] if opts.qcow2_compress else []
            ctx.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", *compress, raw,
                     ctx.out / f"{opts.name}.qcow2"])
        if "raw" not in opts.formats and opts.role == "dom0":
            raw.unlink()
        assemble_seconds = time.monotonic() - t1

        info = self._info(ctx, opts, ids, export, elements, layout, guest_infos)
        info["seconds"] = {"diskimage_builder": round(dib_seconds, 1),
                           "assemble_and_convert": round(assemble_seconds, 1),
                           "total": round(time.monotonic() - started, 1)}
        (ctx.out / "image-info.json").write_text(json.dumps(info, indent=2, sort_keys=True))
        ctx.note(f"image {opts.name}: " + ", ".join(
            f"{f}: {v['size'] >> 20} MiB ({v['allocated'] >> 20} MiB used)"
            for f, v in info["files"].items()))

    # -- helpers ---------------------------------------------------------------------------
    def _check(self, ctx: StageContext, opts: ImageOptions) -> None:
        if os.geteuid() != 0:
            raise InputError("building images needs root (loop devices, mounts, chroot)",
                             hint="run xenforge as root, e.g. sudo xenforge build ...")
        if opts.role == "guest" and opts.guests:
            raise InputError(f"image {opts.name}: a guest image cannot carry guests")
        for i, _ in enumerate(opts.guests):
            if f"guest{i}" not in ctx.inputs:
                raise StageFailed(ctx.node, f"guest {opts.guests[i].name} has no input "
                                  f"guest{i}", log=ctx.log, hint="a planner bug")
        if "repo" in ctx.inputs and not (ctx.inputs["repo"] / "repo" / "Packages").is_file():
            raise StageFailed(ctx.node, f"input repo ({ctx.inputs['repo']}) is not an apt-repo "
                              "output (no repo/Packages)", log=ctx.log)
        if "elements" not in ctx.files or not ctx.files["elements"].is_dir():
            raise StageFailed(ctx.node, "the image stage needs the image_elements folder as "
                              "its file 'elements'", log=ctx.log)

    def _env(self, ctx: StageContext, opts: ImageOptions, ids: dict[str, str], root_mib: int,
             export: Path) -> dict[str, str]:
        dib_cache = ctx.cache.root / "dib"
        (dib_cache / "lockfiles").mkdir(parents=True, exist_ok=True)
        venv_bin = disk_image_create().parent
        repo = ctx.inputs["repo"] / "repo" if "repo" in ctx.inputs else None
        env = {
            "PATH": f"{venv_bin}:{CLEAN_PATH}",
            "ELEMENTS_PATH": str(self._elements(ctx)),
            # DIB's mktemp -t prefers TMPDIR over TMP_DIR: both, so that every mount and
            # loop file of the build lies below the work dir (see xenforge.leftovers)
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
            "XENFORGE_APT_REPO": str(repo) if repo else "",
            "XENFORGE_APT_PACKAGES": "",
            "XENFORGE_APT_REPO_KEEP": "0",
            "XENFORGE_REPLACE_DEBIAN_KERNEL": "1",
            "XENFORGE_EXPORT_DIR": str(export),
            "XENFORGE_HOSTNAME": opts.hostname or opts.name,
            "XENFORGE_ROOT_FS_UUID": ids["fs_uuid"],
            "XENFORGE_ROOT_PARTUUID": ids["root_partuuid"],
            "XENFORGE_XEN_CMDLINE": opts.xen_cmdline,
            "XENFORGE_KERNEL_CMDLINE": opts.kernel_cmdline,
            "XENFORGE_LINUX_CMDLINE": "console=ttyS0,115200",
            "XENFORGE_GRUB_TIMEOUT": "3",
            "XENFORGE_BRIDGE": "xenbr0",
            "XENFORGE_BOOT_REPORT": "1",
            "XENFORGE_GUESTS_DIR": "",
            "XENFORGE_ACCESS_USER": "xenforge",
            "XENFORGE_ACCESS_PUBKEY": "",
        }
        for var in PROXY_VARS:  # the only things taken from the caller's environment
            if os.environ.get(var):
                env[var] = os.environ[var]
        return env

    def _elements(self, ctx: StageContext) -> Path:
        """A private copy of the elements: the build uses what the node id was computed
        from, even if the folder is edited while diskimage-builder runs."""
        copy = ctx.work / "elements"
        if not copy.exists():
            shutil.copytree(ctx.files["elements"], copy, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        return copy

    def _access_key(self, ctx: StageContext, opts: ImageOptions) -> str:
        key = ctx.out / "access_key"
        ctx.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                 f"xenforge-access@{opts.name}", "-f", key])
        key.chmod(0o600)
        return key.with_suffix(".pub").read_text().strip()

    def _stage_guests(self, ctx: StageContext, opts: ImageOptions, root_mib: int,
                      env: dict[str, str]) -> list[dict[str, Any]]:
        if not opts.guests:
            return []
        gdir = ctx.work / "guests"
        (gdir / "xen").mkdir(parents=True)
        infos: list[dict[str, Any]] = []
        used = 0
        autostart = []
        for i, g in enumerate(opts.guests):
            src = ctx.inputs[f"guest{i}"]
            try:
                info = json.loads((src / "image-info.json").read_text())
            except (OSError, ValueError) as exc:
                raise StageFailed(ctx.node, f"guest {g.name}: no image-info.json in {src}",
                                  log=ctx.log) from exc
            if info.get("role") != "guest":
                raise StageFailed(ctx.node, f"guest {g.name}: input guest{i} is a "
                                  f"{info.get('role')} image, not a guest", log=ctx.log)
            disk_file = src / f"{info['name']}.raw"
            images = gdir / "images" / g.name
            images.mkdir(parents=True)
            (images / "disk.raw").symlink_to(disk_file)
            used += _allocated_mib(disk_file)
            for name in ("vmlinuz", "initrd.img"):
                if (src / name).is_file():
                    (images / name).symlink_to(src / name)
                    used += _allocated_mib(src / name)
            if not (src / "vmlinuz").is_file():
                raise StageFailed(ctx.node, f"guest {g.name}: its image exported no kernel "
                                  "(vmlinuz)", log=ctx.log,
                                  hint="the guest image needs a kernel package")
            (gdir / "xen" / f"{g.name}.cfg").write_text(xl_config(g, info))
            if g.autostart:
                autostart.append(g.name)
            infos.append({"name": g.name, "type": g.type, "memory": g.memory,
                          "vcpus": g.vcpus, "autostart": g.autostart,
                          "image": info["name"], "kernel_version": info.get("kernel_version")})
        (gdir / "autostart").write_text("".join(f"{n}\n" for n in autostart))
        if used + DOM0_BASE_MIB > root_mib:
            raise InputError(
                f"image {opts.name}: {opts.size} MiB is too small for its guests "
                f"({used} MiB of guest disks and kernels + ~{DOM0_BASE_MIB} MiB for dom0)",
                hint=f"raise images.{opts.name}.size to at least "
                f"{(used + DOM0_BASE_MIB + opts.size - root_mib) // 1024 + 1}G")
        env["XENFORGE_GUESTS_DIR"] = str(gdir)
        return infos

    def _info(self, ctx: StageContext, opts: ImageOptions, ids: dict[str, str], export: Path,
              elements: list[str], layout: disk.DiskLayout | None,
              guests: list[dict[str, Any]]) -> dict[str, Any]:
        packages: dict[str, str] = {}
        tsv = export / "packages.tsv"
        if tsv.is_file():
            for line in tsv.read_text().splitlines():
                name, version, _arch = ([*line.split("\t"), "", ""])[:3]
                packages[name] = version
        xenforge_pkgs = []
        if "repo" in ctx.inputs:
            repo = json.loads((ctx.inputs["repo"] / "repo.json").read_text())
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
        files = {}
        for f in sorted(ctx.out.iterdir()):
            if f.suffix in (".raw", ".qcow2"):
                st = f.stat()
                files[f.name] = {"size": st.st_size, "allocated": st.st_blocks * 512}
        info: dict[str, Any] = {
            "name": opts.name, "role": opts.role, "release": opts.release,
            "formats": list(opts.formats), "firmware": list(opts.firmware) if layout else [],
            "elements": elements, "extra_packages": list(opts.packages),
            "fs_uuid": ids["fs_uuid"], "fs_label": ids["label"],
            "kernel_version": kver,
            "hypervisors": sorted(p.name for p in boot.glob("xen*.gz")) if boot.is_dir() else [],
            "packages": packages, "xenforge_packages": xenforge_pkgs,
            "files": files, "access_user": "xenforge" if opts.access else None,
            "guests": guests,
        }
        if layout is not None:
            info["disk"] = layout.to_json()
            info["root_partuuid"] = ids["root_partuuid"]
            info["xen_cmdline"] = opts.xen_cmdline
            info["kernel_cmdline"] = opts.kernel_cmdline
        else:
            info["xl"] = {"kernel": "vmlinuz",
                          "ramdisk": "initrd.img" if (ctx.out / "initrd.img").is_file() else None,
                          "cmdline": f"root=/dev/xvda ro {opts.kernel_cmdline}".strip()}
        return info

"""The recipe: what to build, as typed data. Cross-field checks live in ``checks.py``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from xenforge import defaults
from xenforge.lib.xl import GuestType, HvmFirmware, TscMode
from xenforge.recipe.types import (
    BridgeName,
    CmdLine,
    DirPath,
    ElementName,
    FilePath,
    FragmentRef,
    HostName,
    Maintainer,
    MirrorUrl,
    Model,
    Name,
    PackageName,
    SeriesDir,
    SizeMiB,
    UnitName,
)
from xenforge.sources.specs import SourceSpec

Firmware = Literal["bios", "uefi"]
Format = Literal["raw", "qcow2"]
IsoMode = Literal["live", "install"]
Suite = Literal["dom0", "guests"]
GuestBoots = Annotated[int, Field(ge=1, le=2)]


def _formats() -> list[Format]:
    return ["qcow2"]


def _bios() -> list[Firmware]:
    return ["bios"]


def _both_firmwares() -> list[Firmware]:
    return ["bios", "uefi"]


def _iso_modes() -> list[IsoMode]:
    return ["live", "install"]


def _suites() -> list[Suite]:
    return ["dom0", "guests"]


class HypervisorSection(Model):
    spec: FilePath = Field(description="Xen build spec, e.g. ../hypervisor/xen-4.17.yaml")
    config: list[FilePath] = Field(default_factory=list,
                                   description="extra Kconfig fragments over the spec's")
    patches: SeriesDir | None = Field(None, description="replace the spec's patch series")
    source: SourceSpec | None = Field(None, description="replace the spec's pinned source")
    toolstack: bool = Field(True, description="build xl/libxl/xenstored")
    packages: bool = Field(True, description="package hypervisor and toolstack as .debs")
    debug: bool = Field(False, description="a debug hypervisor (CONFIG_DEBUG)")
    cmdline: CmdLine = Field(defaults.XEN_CMDLINE,
                             description="Xen's command line in dom0 images (dom0_mem ...)")


class KernelSection(Model):
    line: DirPath = Field(description="kernel line folder, e.g. ../kernel_patches/linux-6.1")
    base: Literal["tinyconfig", "defconfig", "allnoconfig", "file"] = "tinyconfig"
    base_config: FilePath | None = Field(None, description="the config file when base: file")
    fragments: list[FragmentRef] = Field(
        default_factory=list, description="fragment names from the line (base, dom0, domu) "
        "or paths to .config files, merged in order")
    patches: SeriesDir | None = Field(None, description="replace the line's patch series")
    source: SourceSpec | None = Field(None, description="replace the line's pinned source")
    package: bool = Field(True, description="build a linux-image .deb")
    cmdline: CmdLine | None = Field(None, description="the kernel's command line in images "
                                    "(default: console=hvc0)")


class Target(Model):
    """The distribution release everything is built for: images, buildroot, packages."""

    distribution: Literal["debian"] = "debian"
    release: Name = Field(defaults.RELEASE, description="a release of releases/ "
                          "(debian-RELEASE.yaml), e.g. trixie")
    mirror: MirrorUrl | None = Field(None, description="default: the release file's")
    security_mirror: MirrorUrl | None = Field(None, description="default: the release file's")


class ImageSection(Model):
    role: Literal["dom0", "guest"]
    kernel: Name | None = Field(None, description="a key of `kernels`")
    elements: list[ElementName] = Field(default_factory=list,
                                        description="extra diskimage-builder elements")
    packages: list[PackageName] = Field(default_factory=list,
                                        description="extra Debian packages")
    size: SizeMiB = Field(4096, description="a dom0's disk size, a guest's filesystem size "
                          "(its disk), e.g. 4G")
    formats: list[Format] = Field(default_factory=_formats, min_length=1)
    firmware: list[Firmware] = Field(default_factory=_bios, min_length=1)
    access: bool = Field(False, description="add an SSH access user with a per-build key")
    compress: bool = Field(True, description="compress the qcow2 image with zstd (smaller, "
                           "slower to make; QEMU 5.1 or later reads it)")
    bridge: BridgeName = Field(defaults.BRIDGE, description="dom0: the bridge for guests "
                               "(systemd-networkd; every ethernet port joins it)")
    bootloader: bool = Field(False, description="guest: a partitioned disk with GRUB that "
                             "the guest's firmware boots (HVM guests without PV drivers, "
                             "e.g. with Debian's stock kernel); false = one filesystem, "
                             "its kernel started by dom0")


class GuestSection(Model):
    name: Name
    recipe: FilePath = Field(description="the guest's recipe (its disk), e.g. guest.yaml; "
                             "several guests may share one")
    type: GuestType = Field(description="pv, pvh or hvm (fully virtualised, with a device "
                            "model in dom0)")
    pv_drivers: bool | None = Field(None, description="hvm: Xen's PV drivers (PVHVM: blkfront "
                                    "and netfront, the default) or none (emulated IDE disk "
                                    "and e1000 NIC, as an unmodified OS)")
    firmware: HvmFirmware | None = Field(None, description="hvm: the guest firmware: "
                                         "seabios (Debian's; OVMF would need edk2's OvmfXen "
                                         "build, which Debian does not ship)")
    memory: int = Field(512, ge=64, le=65536, description="MiB")
    vcpus: int = Field(1, ge=1, le=64)
    autostart: bool = False
    hostname: HostName | None = Field(None, description="default: the guest's name")
    bridge: BridgeName | None = Field(None, description="the dom0 image's bridge (the "
                                      "default); another name is an error")
    tsc_mode: TscMode = Field(
        "default", description="xl's tsc_mode; `native` for PVH guests under QEMU's TCG, "
        "whose emulated RDTSCP Xen cannot handle")
    hap: bool = Field(True, description="hardware-assisted paging for a PVH/HVM guest; false = "
                      "shadow paging, needed under QEMU's TCG (its nested paging triple-faults "
                      "guests)")


class IsoSection(Model):
    image: Name = Field(description="a key of `images` (a dom0 image)")
    modes: list[IsoMode] = Field(default_factory=_iso_modes, min_length=1)
    firmware: list[Firmware] = Field(default_factory=_both_firmwares, min_length=1)
    label: str = Field("XENFORGE", pattern=r"^[A-Z0-9_]{1,32}$",
                       description="the volume label the live system finds its medium by")
    name: Name | None = Field(None, description="the file's base name (default: the recipe's)")
    version: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}$",
                                description="in the file name: NAME-VERSION.iso (default: "
                                "the build date, YYYYMMDD of SOURCE_DATE_EPOCH)")
    guests: bool = Field(True, description="carry the host's guests (their disks and xl "
                         "configs) in the live system and the installed one")
    compression_level: int = Field(defaults.SQUASHFS_ZSTD_LEVEL, ge=1, le=22,
                                   description="zstd level of the live system's squashfs "
                                   "(19: the smallest, ten times slower to make)")


class BootSettings(Model):
    memory: int = Field(2048, ge=256, description="MiB of RAM for the QEMU machine")
    cpus: int = Field(2, ge=1, le=64)
    firmware: Firmware = "bios"
    # a ceiling for a hung boot: a dom0 under QEMU's TCG is ready after its autostarted guests,
    # 2-7 min alone and 11 min beside a second emulated machine on 2 cores (the parallel suite)
    timeout: int = Field(1800, ge=10, description="seconds until the VM must be ready")


class TestsSection(Model):
    builtin: list[Suite] = Field(default_factory=_suites)
    suites: list[FilePath] = Field(default_factory=list, description="your testinfra files")
    services: list[UnitName] = Field(
        default_factory=list, description="systemd units the dom0 suite requires active "
        "(`.service` unless another suffix is given); default: the Xen units installed")
    boot: BootSettings = Field(default_factory=BootSettings)
    guest_boots: GuestBoots | dict[Name, GuestBoots] = Field(
        defaults.GUEST_BOOTS, description="boots of each guest the guests suite checks: 2 "
        "(create, clean shutdown, create again; an HVM guest's second boot measures its disk) "
        "or 1 (that boot measures the disk), for every guest or per guest name "
        "({guest-pv: 1}; a guest not named gets 2): under emulation each boot takes minutes")
    after_build: bool = Field(False, description="`xenforge build` also runs the tests")

    def boots_of(self, guest: str) -> int:
        """How many boots of ``guest`` the guests suite checks."""
        if isinstance(self.guest_boots, dict):
            return self.guest_boots.get(guest, defaults.GUEST_BOOTS)
        return self.guest_boots


class CacheSection(Model):
    remote: str | None = Field(
        None, pattern=r"^https?://[^\s@?#]+$",
        description="a shared remote cache (HTTP with PUT and MOVE, e.g. nginx's dav module); "
        "credentials from ~/.netrc or the environment, never in the URL")
    read_only: bool = Field(False, description="fetch from the remote cache, never upload")


class SigningSection(Model):
    key: str | None = Field(
        None, pattern=r"^[A-Za-z0-9@._+<> -]{1,200}$",
        description="GnuPG key (id, fingerprint or address) that signs SHA256SUMS; "
        "$XENFORGE_SIGNING_KEY wins; the passphrase comes from $XENFORGE_SIGNING_PASSPHRASE")


class Recipe(Model):
    schema_: Literal[1] = Field(alias="schema", description="recipe format version")
    name: Name | None = Field(None, description="defaults to the file name")
    description: str = ""
    maintainer: Maintainer = Field(defaults.MAINTAINER,
                                   description="Maintainer of every .deb the build makes")
    epoch: int | None = Field(None, ge=0, lt=2**32, description="SOURCE_DATE_EPOCH of the "
                              "build (default: the newest `released` date of its pinned "
                              "sources)")
    target: Target = Field(default_factory=Target,
                           description="the distribution release to build for")
    extends: list[FilePath] = Field(default_factory=list,
                                    description="recipes merged under this one, in order")
    hypervisor: HypervisorSection | None = None
    kernels: dict[Name, KernelSection] = Field(default_factory=dict)
    images: dict[Name, ImageSection] = Field(default_factory=dict)
    guests: list[GuestSection] = Field(default_factory=list)
    iso: IsoSection | None = None
    tests: TestsSection | None = None
    signing: SigningSection | None = Field(None, description="how exports are signed")
    cache: CacheSection | None = Field(None, description="where built nodes are shared "
                                       "(`--remote-cache` and $XENFORGE_REMOTE_CACHE win)")

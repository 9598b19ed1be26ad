"""xl, Xen's toolstack CLI: the guest settings xenforge knows and the config files it writes.

Three kinds of guest (``type``):

- ``pv`` and ``pvh``: dom0 hands the guest's kernel (and initramfs) to Xen;
- ``hvm``: fully virtualised, with a device model (Debian's ``qemu-system-xen``) in dom0 and
  the guest firmware (SeaBIOS, loaded by ``hvmloader``). With ``pv_drivers`` (PVHVM)
  the guest kernel unplugs the emulated disk and NIC (``xen_platform_pci = 1``) and uses
  Xen's blkfront and netfront; without, it sees an IDE disk and an e1000 NIC only
  (``xen_platform_pci = 0``), as an unmodified operating system would. An HVM guest either
  boots its own disk's bootloader (``boot = "disk"``) or QEMU boots the kernel directly
  (``boot = "kernel"``, like PV/PVH).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from xenforge.core.model import FrozenModel

#: xl's tsc_mode of a guest; "native" where the (emulated) CPU has no invariant TSC, e.g.
#: QEMU TCG, on which Xen's RDTSC(P) emulation fails for PVH guests
TscMode = Literal["default", "native", "always_emulate", "native_paravirt"]
GuestType = Literal["pv", "pvh", "hvm"]
#: an HVM guest's firmware (xl's ``firmware``: hvmloader, then Debian's SeaBIOS). Not OVMF:
#: Xen needs edk2's OvmfXen platform, and Debian's ovmf package ships OvmfPkgX64 only
HvmFirmware = Literal["seabios"]
#: where a dom0 image keeps its guests: IMAGES_DIR/<name>/{disk.raw,vmlinuz,initrd.img}
IMAGES_DIR = "/var/lib/xen/images"
#: where xenconsoled logs a guest's (PV) console, and where an HVM guest's serial port goes
CONSOLE_LOG = "/var/log/xen/console/guest-{name}.log"
SERIAL_LOG = "/var/log/xen/console/guest-{name}-serial.log"
#: the characters a command line written into a config file may not hold
UNSAFE_CMDLINE_CHARS = "\"'`$\\"


class Guest(FrozenModel):
    """One guest of a dom0 image, as its ``xl`` config describes it."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=64)
    type: GuestType
    memory: int = Field(ge=64, description="MiB")
    vcpus: int = Field(ge=1)
    autostart: bool
    bridge: str = Field(pattern=r"^[a-zA-Z0-9_.-]{1,15}$")
    hostname: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$", max_length=63)
    cmdline: str = Field(description="the kernel's command line after root=/dev/xvda ro")
    tsc_mode: TscMode = "default"
    #: False = shadow paging for PVH/HVM guests; ignored by PV guests
    hap: bool = True
    #: HVM only: Xen's PV drivers in the guest (PVHVM) or emulated devices only
    pv_drivers: bool = True
    firmware: HvmFirmware = "seabios"
    #: HVM only: "disk" = the guest's own bootloader, "kernel" = direct kernel boot
    boot: Literal["kernel", "disk"] = "kernel"

    @field_validator("cmdline")
    @classmethod
    def _safe(cls, value: str) -> str:
        return safe_cmdline(value)

    @property
    def console_log(self) -> str:
        """The log a booted guest's console lines reach in dom0."""
        if self.type == "hvm" and self.boot == "disk":
            return SERIAL_LOG.format(name=self.name)
        return CONSOLE_LOG.format(name=self.name)


def safe_cmdline(value: str) -> str:
    """``value`` if it can be written into a boot menu or an xl config as it is: printable,
    none of UNSAFE_CMDLINE_CHARS (quotes, backslash, ``$``, backtick); else ValueError."""
    bad = sorted({c for c in value if c in UNSAFE_CMDLINE_CHARS or not c.isprintable()})
    if bad:
        shown = " ".join("newline" if c == "\n" else repr(c) for c in bad)
        raise ValueError(f"a command line may not contain {shown}")
    return value


def quoted(field: str, value: object) -> str:
    """``value`` as an xl config string (in double quotes). xl's strings have no escape
    that every version reads alike, so a value that would need one (a quote, a backslash,
    a newline or another control character) is refused, never written: it would end the
    string and start a setting of its own (``memory = 99999``)."""
    text = str(value)
    if any(c in "\"\\" or not c.isprintable() for c in text):
        raise ValueError(f"xl config: {field} {text!r} holds a quote, a backslash or a "
                         "control character")
    return f'"{text}"'


def guest_config(g: Guest, *, ramdisk: bool) -> str:
    """The ``xl`` config of a guest (see the module docstring); every string is written by
    :func:`quoted`, so no value of the guest adds a setting."""
    base = f"{IMAGES_DIR}/{g.name}"
    cmdline = f"root=/dev/xvda ro {g.cmdline} systemd.hostname={g.hostname}".strip()
    direct = g.type != "hvm" or g.boot == "kernel"
    lines = [
        f"# {g.name}: written by xenforge from the recipe's guests entry",
        f"name = {quoted('name', g.name)}",
        f"type = {quoted('type', g.type)}",
        *([f"kernel = {quoted('kernel', f'{base}/vmlinuz')}"] if direct else []),
        *([f"ramdisk = {quoted('ramdisk', f'{base}/initrd.img')}"] if direct and ramdisk
          else []),
        *([f"cmdline = {quoted('cmdline', cmdline)}"] if direct else []),
        f"memory = {int(g.memory)}",
        f"vcpus = {int(g.vcpus)}",
        *([f"tsc_mode = {quoted('tsc_mode', g.tsc_mode)}"] if g.tsc_mode != "default"
          else []),
        *(["hap = 0"] if g.type != "pv" and not g.hap else []),
        *(_hvm(g) if g.type == "hvm" else []),
        f"disk = [ {quoted('disk', _disk(g, base))} ]",
        f"vif = [ {quoted('vif', _vif(g))} ]",
        'on_crash = "preserve"',
    ]
    return "\n".join(lines) + "\n"


def _hvm(g: Guest) -> list[str]:
    """The device model, firmware and consoles of an HVM guest."""
    serial = quoted("serial", f"file:{g.console_log}") if g.boot == "disk" else '"pty"'
    return [
        'device_model_version = "qemu-xen"',
        f"firmware = {quoted('firmware', g.firmware)}",
        f"xen_platform_pci = {1 if g.pv_drivers else 0}",
        # emulated disks on AHCI, not IDE: SeaBIOS and the guest then move sectors by DMA
        # instead of an I/O exit per word (under QEMU's TCG, minutes of the boot)
        *([] if g.pv_drivers else ['hdtype = "ahci"']),
        # no graphics: the console is the serial port (unmodified) or hvc0 (PVHVM)
        'vga = "none"',
        "vnc = 0",
        f"serial = {serial}",
    ]


def _disk(g: Guest, base: str) -> str:
    # HVM: the emulated IDE disk is hda; with PV drivers the guest unplugs it and takes the
    # same disk as xvda from blkfront
    vdev = "hda" if g.type == "hvm" and not g.pv_drivers else "xvda"
    return f"format=raw, vdev={vdev}, access=rw, target={base}/disk.raw"


def _vif(g: Guest) -> str:
    if g.type != "hvm":
        return f"bridge={g.bridge}"
    if g.pv_drivers:  # netfront only: no emulated NIC to unplug
        return f"bridge={g.bridge}, type=vif"
    return f"bridge={g.bridge}, type=ioemu, model=e1000"

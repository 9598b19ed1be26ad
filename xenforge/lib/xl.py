"""xl, Xen's toolstack CLI: the guest settings xenforge knows and the config files it writes
for guests started with their kernel given directly (PV and PVH)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from xenforge.core.model import FrozenModel

#: xl's tsc_mode of a guest; "native" where the (emulated) CPU has no invariant TSC, e.g.
#: QEMU TCG, on which Xen's RDTSC(P) emulation fails for PVH guests
TscMode = Literal["default", "native", "always_emulate", "native_paravirt"]
GuestType = Literal["pv", "pvh"]
#: where a dom0 image keeps its guests: IMAGES_DIR/<name>/{disk.raw,vmlinuz,initrd.img}
IMAGES_DIR = "/var/lib/xen/images"
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
    #: False = shadow paging for PVH guests (QEMU TCG's emulated nested paging triple-faults
    #: them); ignored by PV guests
    hap: bool = True


def guest_config(g: Guest, *, ramdisk: bool) -> str:
    """The ``xl`` config of a guest whose kernel (and initramfs) dom0 hands to Xen."""
    base = f"{IMAGES_DIR}/{g.name}"
    cmdline = f"root=/dev/xvda ro {g.cmdline} systemd.hostname={g.hostname}".strip()
    lines = [
        f"# {g.name}: written by xenforge from the recipe's guests entry",
        f'name = "{g.name}"',
        f'type = "{g.type}"',
        f'kernel = "{base}/vmlinuz"',
        *([f'ramdisk = "{base}/initrd.img"'] if ramdisk else []),
        f'cmdline = "{cmdline}"',
        f"memory = {g.memory}",
        f"vcpus = {g.vcpus}",
        *([f'tsc_mode = "{g.tsc_mode}"'] if g.tsc_mode != "default" else []),
        *(["hap = 0"] if g.type == "pvh" and not g.hap else []),
        f'disk = [ "format=raw, vdev=xvda, access=rw, target={base}/disk.raw" ]',
        f'vif = [ "bridge={g.bridge}" ]',
        'on_crash = "preserve"',
    ]
    return "\n".join(lines) + "\n"

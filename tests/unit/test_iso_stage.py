"""The ``iso:`` section: its planning, the ISO's boot menu and installer settings, and the
``iso`` stage on a tiny real root filesystem (a real squashfs and a real grub-mkrescue ISO,
checked with xorriso and unsquashfs; booting the real one is tests/integration/test_iso.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from stagectx import stage_context
from test_images import _guest, _host_variant, _plan, _rootfs_out

from xenforge.core.errors import InputError, ValidationFailed
from xenforge.lib.isoseed import SEED_FILE, SEED_LABEL, seed_config, write_seed
from xenforge.recipe.load import load_recipe
from xenforge.stages.iso import IsoOptions, IsoStage, grub_cfg, install_conf, with_vga

REPO = Path(__file__).resolve().parents[2]
HOST = REPO / "recipes" / "xen-host.yaml"


def test_the_default_recipe_plans_an_iso_of_the_disks_rootfs() -> None:
    g = _plan(HOST)
    iso, disk = g.nodes["iso:xen-host"], g.nodes["image:xen-host"]
    assert iso.stage == "iso"
    # one diskimage-builder run feeds the disk and the ISO
    assert iso.inputs == {"rootfs": "rootfs:xen-host", "guests": disk.inputs["guests"]}
    rootfs = g.nodes["rootfs:xen-host"]
    assert rootfs.options["elements"][0] == "xenforge-live"
    assert "xenforge-live" not in g.nodes["rootfs:guest"].options["elements"]
    opts = IsoOptions.model_validate(iso.options)
    # the disk's command lines and guests, so ISO and disk agree
    assert opts.xen_cmdline == disk.options["xen_cmdline"]
    assert opts.kernel_cmdline == disk.options["kernel_cmdline"]
    assert [x.name for x in opts.guests] == ["guest-pvh", "guest-pv", "guest-pvhvm"]
    assert opts.label == "XENFORGE" and opts.name == "xen-host"
    assert opts.firmware == ("bios", "uefi") and opts.modes == ("live", "install")


def test_no_iso_section_no_iso_node_and_no_live_element(tmp_path: Path) -> None:
    text = HOST.read_text()
    start, end = text.index("iso:\n"), text.index("# three guests")
    host = _host_variant(tmp_path, text[start:end], "")
    g = _plan(host)
    assert not [n for n in g.nodes if n.startswith("iso:")]
    assert "xenforge-live" not in g.nodes["rootfs:xen-host"].options["elements"]


def test_iso_settings_rerun_only_the_iso(tmp_path: Path) -> None:
    before = _plan(HOST)
    after = _plan(_host_variant(tmp_path, "label: XENFORGE", "label: XF_RELEASE\n  "
                                "version: '1.2'\n  guests: false"))
    changed = {n for n in before.nodes if before.nodes[n].id != after.nodes[n].id}
    assert changed == {"iso:xen-host"}
    opts = IsoOptions.model_validate(after.nodes["iso:xen-host"].options)
    assert opts.label == "XF_RELEASE" and opts.version == "1.2" and opts.guests == ()
    assert after.nodes["iso:xen-host"].inputs["guests"] == []


@pytest.mark.parametrize("field,value,words", [
    ("label", "xenforge", ["iso.label", "pattern"]),
    ("image", "guest-pv", ["iso.image", "no image named"]),
    ("version", "'1 2'", ["iso.version"]),
])
def test_bad_iso_fields_name_the_field(tmp_path: Path, field: str, value: str,
                                       words: list[str]) -> None:
    old = {"label": "label: XENFORGE", "image": "image: xen-host",
           "version": "label: XENFORGE"}[field]
    new = f"{field}: {value}" if field != "version" else f"label: XENFORGE\n  version: {value}"
    host = _host_variant(tmp_path, old, new)
    with pytest.raises(ValidationFailed) as err:
        load_recipe(host)
    text = err.value.render()
    assert "xen-host.yaml" in text and all(w in text for w in words), text


def _opts(**kw: Any) -> IsoOptions:
    base: dict[str, Any] = {
        "name": "host", "version": "1.0", "label": "XF_TEST", "modes": ["live", "install"],
        "firmware": ["bios", "uefi"], "xen_cmdline": "console=com1 com1=115200 dom0_mem=512M",
        "kernel_cmdline": "console=hvc0", "linux_cmdline": "console=ttyS0", "grub_timeout": 3,
        "menu_timeout": 5, "esp_size": 64, "access_user": "xenforge",
        "guests": [_guest(name="g1", hostname="g1").model_dump()]}
    return IsoOptions.model_validate({**base, **kw})


def test_xen_writes_to_the_screen_too() -> None:
    assert with_vga("console=com1 com1=115200") == "console=com1,vga com1=115200"
    assert with_vga("dom0_mem=1G console=com1,vga") == "dom0_mem=1G console=com1,vga"
    assert with_vga("dom0_mem=1G") == "dom0_mem=1G console=com1,vga"


def test_menu_live_install_rescue_on_serial_and_screen() -> None:
    cfg = grub_cfg(_opts(), "1.0")
    assert cfg.index("--id live") < cfg.index("--id install") < cfg.index("--id rescue")
    assert "set default=0" in cfg and "set timeout=5" in cfg
    assert "terminal_output serial console" in cfg and "insmod all_video" in cfg
    assert cfg.count("multiboot2 /boot/xen.gz console=com1,vga com1=115200 dom0_mem=512M") == 3
    assert "set xf_live='boot=xenforge-live xenforge.label=XF_TEST'" in cfg
    install = cfg[cfg.index("--id install"):cfg.index("--id rescue")]
    assert "xenforge.install" in install and "xenforge.booted=$xf_fw" in install
    assert "SYSTEMD_SULOGIN_FORCE=1" in cfg[cfg.index("--id rescue"):]
    live_only = grub_cfg(_opts(modes=["live"]), "1.0")
    assert "--id install" not in live_only and "--id rescue" in live_only


def test_install_conf_is_what_the_installer_sources(tmp_path: Path) -> None:
    conf = tmp_path / "install.conf"
    conf.write_text(install_conf(_opts(), 123456789, {"b": "a", "c": "a"}))
    out = subprocess.run(["bash", "-c", f'. {conf}; echo "$SYSTEM_BYTES|$ESP_MIB|'
                          '$XEN_CMDLINE|$GRUB_TIMEOUT|$GRUB_MODULES|$GUEST_COPIES"'],
                         capture_output=True, text=True, check=True).stdout
    size, esp, xen, timeout, modules, copies = out.strip().split("|")
    assert copies == "b=a c=a"  # guests b and c have a's disk: the installer reads it once
    assert (size, esp, xen, timeout) == ("123456789", "64",
                                          "console=com1 com1=115200 dom0_mem=512M", "3")
    assert "multiboot2" in modules.split() and "part_gpt" in modules.split()


needs_iso_tools = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("mksquashfs", "grub-mkrescue", "xorriso", "mformat")),
    reason="squashfs-tools, grub-common, xorriso or mtools missing (ci/setup-host.sh)")


@needs_iso_tools
@pytest.mark.skipif(shutil.which("mount") is None or not Path("/dev/loop-control").exists(),
                    reason="no loop devices")
def test_iso_stage_makes_a_hybrid_iso_of_the_rootfs(tmp_path: Path) -> None:
    dom0 = _rootfs_out(tmp_path, "host", "dom0")
    (dom0 / "xen-4.20.gz").write_bytes(b"xen" * 1000)
    guest = _rootfs_out(tmp_path, "guest", "guest")
    two = [_guest(name=n, hostname=n).model_dump() for n in ("g1", "g2")]  # one image
    ctx = stage_context(tmp_path, node="iso:host", options=_opts(guests=two),
                        inputs={"rootfs": dom0, "guests": (guest, guest)})
    IsoStage().run(ctx)
    iso = ctx.out / "host-1.0.iso"
    info = json.loads((ctx.out / "iso-info.json").read_text())
    assert info["iso"]["file"] == iso.name and info["iso"]["size"] == iso.stat().st_size
    assert info["iso"]["label"] == "XF_TEST" and info["guests"][0]["name"] == "g1"

    def xorriso(*args: str) -> str:
        return subprocess.run(["xorriso", "-indev", str(iso), *args], capture_output=True,
                              text=True, check=True).stdout + ""

    assert "Volume Id    : XF_TEST" in subprocess.run(
        ["xorriso", "-indev", str(iso), "-pvd_info"], capture_output=True, text=True,
        check=True).stderr + xorriso("-pvd_info")
    eltorito = subprocess.run(["xorriso", "-indev", str(iso), "-report_el_torito", "plain"],
                              capture_output=True, text=True, check=True)
    report = eltorito.stdout + eltorito.stderr
    assert "El Torito boot img :   1  BIOS" in report and "UEFI" in report
    # hybrid: an MBR partition table and a GPT, so the file boots written to a USB stick
    parts = subprocess.run(["sfdisk", "--dump", str(iso)], capture_output=True, text=True)
    assert parts.returncode == 0 and "label:" in parts.stdout, parts.stderr
    # the tree: Xen, kernel, initramfs, squashfs with the guest put in, installer settings
    listing = subprocess.run(["xorriso", "-indev", str(iso), "-find", "/", "-type", "f"],
                             capture_output=True, text=True, check=True).stdout
    for path in ("/boot/xen.gz", "/boot/vmlinuz", "/boot/initrd.img", "/boot/grub/grub.cfg",
                 "/live/filesystem.squashfs", "/xenforge/install.conf"):
        assert f"'{path}'" in listing, (path, listing)
    extract = tmp_path / "x"
    extract.mkdir()
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract",
                    "/live/filesystem.squashfs", str(extract / "fs.squashfs")],
                   capture_output=True, check=True)
    files = subprocess.run(["unsquashfs", "-l", str(extract / "fs.squashfs")],
                           capture_output=True, text=True, check=True).stdout
    assert "squashfs-root/var/lib/xen/images/g1/disk.raw" in files
    assert "squashfs-root/var/lib/xen/images/g2/disk.raw" in files
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract",
                    "/xenforge/install.conf", str(extract / "install.conf")],
                   capture_output=True, check=True)
    assert 'GUEST_COPIES="g2=g1"' in (extract / "install.conf").read_text()
    assert "squashfs-root/etc/xen/g1.cfg" in files and "squashfs-root/etc/xen/auto/g1.cfg" in files
    assert "squashfs-root/etc/default/xenforge-boot" in files
    assert not list(tmp_path.glob("**/mnt/*"))  # nothing left mounted or behind


def test_a_seed_chooses_the_install_with_its_parameters(tmp_path: Path) -> None:
    cfg = seed_config({"xenforge.install": "/dev/vda", "xenforge.force": "",
                       "xenforge.ssh_key": "ssh-ed25519 AAAA me@h 100%"})
    assert "set default=install\nset timeout=0\n" in cfg
    # one word per parameter: GRUB splits at spaces, the installer decodes %20 and %25
    assert ("set xf_auto='xenforge.install=/dev/vda xenforge.force "
            "xenforge.ssh_key=ssh-ed25519%20AAAA%20me@h%20100%25'") in cfg
    with pytest.raises(InputError, match="quote"):
        seed_config({"xenforge.hostname": "a'b"})
    with pytest.raises(InputError, match="no menu entry"):
        seed_config({}, entry="nope")
    seed = write_seed(tmp_path / "seed.img", {"xenforge.then": "poweroff"}, work=tmp_path)
    label = subprocess.run(["blkid", "-o", "value", "-s", "LABEL", str(seed)],
                           capture_output=True, text=True).stdout.strip()
    assert label == SEED_LABEL
    text = subprocess.run(["debugfs", "-R", f"cat /{SEED_FILE}", str(seed)],
                          capture_output=True, text=True, check=True).stdout
    assert "xenforge.then=poweroff" in text


def test_the_installer_decodes_what_the_seed_encodes() -> None:
    script = (REPO / "image_elements/xenforge-live/bin/xenforge-install").read_text()
    unescape = next(ln for ln in script.splitlines() if ln.startswith("unescape()"))
    word = seed_config({"k": "ssh-ed25519 AAAA me@h 100%"}).split("k=", 1)[1].split("'")[0]
    out = subprocess.run(["bash", "-c", f"{unescape}; unescape '{word}'"],
                         capture_output=True, text=True, check=True).stdout
    assert out == "ssh-ed25519 AAAA me@h 100%"

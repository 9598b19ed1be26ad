"""Cross-field rules, separate from the schema: references between sections and what a
build needs to make sense. Each rule returns Problems with a location and a fix."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from xenforge.core.errors import Problem
from xenforge.core.paths import path_kind
from xenforge.limits import MIN_ROOTFS_MIB
from xenforge.recipe.types import is_host_name
from xenforge.recipe.yamlload import Loc, Origins, loc_text

if TYPE_CHECKING:
    from xenforge.recipe.load import LoadedRecipe
    from xenforge.recipe.model import ImageSection


def check_recipe(loaded: LoadedRecipe, origins: Origins) -> list[Problem]:
    r = loaded.recipe
    out: list[Problem] = []

    def add(loc: Loc, msg: str, hint: str) -> None:
        pos = origins.find(loc)
        out.append(Problem(pos[0] if pos else loaded.file, pos[1] if pos else None,
                           loc_text(loc), msg, hint))

    kernels = sorted(r.kernels)
    for key, k in r.kernels.items():
        if k.base == "file" and k.base_config is None:
            add(("kernels", key, "base"), "base: file needs base_config",
                "add `base_config: path/to/config` or use base: tinyconfig")
        if k.base != "file" and k.base_config is not None:
            add(("kernels", key, "base_config"), f"base_config is ignored with base: {k.base}",
                "set `base: file` or remove base_config")
        line = loaded.kernel_lines.get(key)
        for i, frag in enumerate(k.fragments):
            if isinstance(frag, Path):
                from xenforge.recipe.types import not_a_file

                wrong = not_a_file(frag)  # a folder, FIFO or /proc is never read as one
                if path_kind(frag) is None:
                    add(("kernels", key, "fragments", i), f"fragment not found: {frag}",
                        "relative paths are relative to the recipe")
                elif wrong is not None:
                    add(("kernels", key, "fragments", i), *wrong)
            elif line is not None and frag not in line.fragments:
                add(("kernels", key, "fragments", i), f"unknown fragment {frag!r}",
                    f"the line {line.name} has: {', '.join(sorted(line.fragments)) or 'none'}"
                    "; or give a path to a .config file")

    for key, img in r.images.items():
        if img.kernel is not None and img.kernel not in r.kernels:
            add(("images", key, "kernel"), f"no kernel named {img.kernel!r}",
                f"kernels defined: {', '.join(kernels) or 'none'}")
        if img.role == "dom0" and r.hypervisor is None:
            add(("images", key, "role"), "a dom0 image needs a hypervisor section",
                "add `hypervisor:` (e.g. spec: ../hypervisor/xen-4.17.yaml)")
        if img.role == "dom0" and img.kernel is None:
            add(("images", key, "kernel"), "a dom0 image needs a kernel",
                "set `kernel:` to a key of `kernels`, e.g. dom0")
        if img.bootloader and img.role != "guest":
            add(("images", key, "bootloader"), "only a guest image takes `bootloader`",
                "a dom0 image always has GRUB; drop the field")
        if img.role == "guest" and not img.bootloader and img.size < MIN_ROOTFS_MIB:
            add(("images", key, "size"), f"{img.size} MiB is too small for a guest's "
                f"filesystem (its disk): at least {MIN_ROOTFS_MIB} MiB",
                f"e.g. size: 2G (a disk below {MIN_ROOTFS_MIB} MiB needs `bootloader: true`)")
        if len(set(img.formats)) != len(img.formats):
            add(("images", key, "formats"), "a format is listed twice", "list each once")

    seen: dict[str, int] = {}
    for i, g in enumerate(r.guests):
        if g.name in seen:
            add(("guests", i, "name"), f"guest name {g.name!r} is used twice "
                f"(also guests[{seen[g.name]}])", "give every guest its own name")
        seen.setdefault(g.name, i)
        sub = loaded.guests.get(g.name)
        if sub is not None and not any(im.role == "guest" for im in sub.recipe.images.values()):
            add(("guests", i, "recipe"), f"{g.recipe.name} has no image with role: guest",
                "a guest recipe needs `images: {NAME: {role: guest, kernel: ...}}`")
        if g.hostname is None and not is_host_name(g.name):
            add(("guests", i, "name"), f"{g.name!r} is no host name, and a guest's host name "
                "is its name unless it sets one", "set `hostname:` (lower case letters, "
                "digits, '-' and '.'), or rename the guest")
        for field in ("pv_drivers", "firmware"):
            if g.type != "hvm" and getattr(g, field) is not None:
                add(("guests", i, field), f"`{field}` applies to HVM guests only, this one is "
                    f"{g.type}", f"drop guests[{i}].{field} or set type: hvm")
        gimg = _guest_image(sub) if sub is not None else None
        if gimg is not None and gimg.bootloader and g.type != "hvm":
            add(("guests", i, "type"), f"{g.recipe.name}'s disk boots with its own bootloader, "
                f"which a {g.type} guest cannot use", "use type: hvm, or a guest recipe "
                "without `bootloader` (dom0 starts its kernel)")
        if gimg is not None and g.type == "hvm" and g.pv_drivers is False and gimg.kernel:
            add(("guests", i, "pv_drivers"), f"an HVM guest without PV drivers boots its own "
                f"disk, but {g.recipe.name}'s image starts a xenforge kernel",
                "name a guest recipe with `bootloader: true` and Debian's kernel "
                "(e.g. guest-hvm.yaml), or drop pv_drivers: false")
    dom0 = next((im for im in r.images.values() if im.role == "dom0"), None)
    for i, g in enumerate(r.guests):
        if dom0 is not None and g.bridge is not None and g.bridge != dom0.bridge:
            add(("guests", i, "bridge"), f"the dom0 image has no bridge {g.bridge!r}",
                f"its bridge is {dom0.bridge!r} (images.NAME.bridge); leave guests[{i}].bridge "
                "out to use it")
    if r.guests and dom0 is None:
        add(("guests",), "guests need a dom0 image to live in",
            "add an image with `role: dom0`")

    if r.iso is not None:
        iso_img = r.images.get(r.iso.image)
        if iso_img is None:
            add(("iso", "image"), f"no image named {r.iso.image!r}",
                f"images defined: {', '.join(sorted(r.images)) or 'none'}")
        elif iso_img.role != "dom0":
            add(("iso", "image"), f"image {r.iso.image!r} has role {iso_img.role}",
                "an installable ISO carries a dom0 image")

    boots = r.tests.guest_boots if r.tests is not None else None
    for name in sorted(boots) if isinstance(boots, dict) else []:
        if name not in seen:
            add(("tests", "guest_boots", name), f"no guest named {name!r}",
                f"guests of this recipe: {', '.join(sorted(seen)) or 'none'} (a recipe that "
                "extends another inherits its tests section: set guest_boots for its own "
                "guests)")
    if r.tests is not None and r.tests.after_build and not r.images:
        add(("tests", "after_build"), "tests need an image to boot",
            "add an image with role: dom0, or use `xenforge test --host` for a real host")
    return out


def _guest_image(sub: LoadedRecipe) -> ImageSection | None:
    """The guest image of a guest recipe (its first image with role guest)."""
    return next((im for im in sub.recipe.images.values() if im.role == "guest"), None)

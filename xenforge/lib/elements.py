"""Which diskimage-builder elements a root filesystem is made of, and which of xenforge's own
element folders (``image_elements/``) that build reads: the ones it names and, through each
folder's ``element-deps``, the ones they need. Those folders - and only those - are the
rootfs node's input files, so an edit of the live ISO's element rebuilds the ISO's root
filesystem only, not every image's. Elements that are not xenforge's (``debian-minimal``,
``openssh-server``, ...) come with diskimage-builder, whose version the build environment
pins."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

#: elements every rootfs of a role gets (the recipe's ``elements`` come after them)
ROLE_ELEMENTS: dict[str, tuple[str, ...]] = {
    "dom0": ("debian-minimal", "openssh-server", "xen-dom0", "xenforge-boot",
             "xenforge-firstboot", "xenforge-sanitize", "xenforge-export"),
    "guest": ("debian-minimal", "openssh-server", "xen-domu", "xenforge-firstboot",
              "xenforge-sanitize", "xenforge-export"),
}
#: the element of the recipe's ssh access (a login user and key)
ACCESS_ELEMENT = "xenforge-access"


def rootfs_elements(role: str, access: bool, extra: Iterable[str]) -> list[str]:
    """The elements diskimage-builder is given for a rootfs, in order, each once."""
    names = [*ROLE_ELEMENTS[role], *([ACCESS_ELEMENT] if access else [])]
    return names + [e for e in dict.fromkeys(extra) if e not in names]


def own_folders(names: Iterable[str], folder: Path) -> list[Path]:
    """The folders below ``folder`` of ``names`` and of every element they need, in the
    order first needed (an element that is not in ``folder`` is diskimage-builder's)."""
    found: dict[str, Path] = {}
    todo = list(names)
    while todo:
        name = todo.pop(0)
        path = folder / name
        if name in found or not path.is_dir():
            continue
        found[name] = path
        deps = path / "element-deps"
        if deps.is_file():
            todo += [ln.strip() for ln in deps.read_text().splitlines()
                     if ln.strip() and not ln.lstrip().startswith("#")]
    return list(found.values())

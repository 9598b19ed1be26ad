"""Where xenforge's shipped data lives: the recipes, Xen specs, kernel lines, diskimage-builder
elements and testinfra suites that users edit in a checkout (top-level folders) and that a
wheel carries as package data (``xenforge/data/<name>``, see ``pyproject.toml``)."""

from __future__ import annotations

from pathlib import Path

from xenforge.core.errors import XenforgeError

_PACKAGE = Path(__file__).resolve().parent.parent
#: in a wheel: xenforge/data/<name>
_PACKAGED = _PACKAGE / "data"
#: in a checkout: the repository's top-level folders
_CHECKOUT = _PACKAGE.parent
#: data folder name -> where it lives in a checkout
FOLDERS = {
    "recipes": "recipes",
    "hypervisor": "hypervisor",
    "kernel_patches": "kernel_patches",
    "image_elements": "image_elements",
    "releases": "releases",
    "infra": "tests/infra",
    "templates": "xenforge/templates",
}


def data_dir(name: str) -> Path:
    """The folder of shipped data ``name`` (a key of :data:`FOLDERS`)."""
    for candidate in (_PACKAGED / name, _CHECKOUT / FOLDERS[name]):
        if candidate.is_dir():
            return candidate
    raise XenforgeError(f"xenforge's data folder {name!r} is missing (looked in "
                        f"{_PACKAGED / name} and {_CHECKOUT / FOLDERS[name]})",
                        hint="reinstall xenforge (pip install .) or use a full checkout")

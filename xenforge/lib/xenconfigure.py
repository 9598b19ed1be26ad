"""Arguments for Xen's ``./configure``: what the toolstack stage passes and what a spec's
``toolstack.configure`` may hold (checked by both, so ``xenforge validate`` refuses what the
stage would)."""

from __future__ import annotations

#: configure switches that would make the build fetch code from the internet
DOWNLOADS = ("--enable-stubdom", "--enable-qemu-traditional", "--enable-githttp",
             "--enable-ipxe", "--enable-rombios")


def check_configure_flag(flag: str) -> str:
    """One argument for Xen's ./configure: an option, never one that makes the build download
    sources."""
    if not flag.startswith("--"):
        raise ValueError(f"configure argument {flag!r} must start with '--'")
    if flag.split("=", 1)[0] in DOWNLOADS:
        raise ValueError(f"configure argument {flag!r} makes Xen's build download "
                         "sources; xenforge builds only from pinned inputs")
    return flag

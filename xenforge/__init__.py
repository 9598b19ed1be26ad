"""xenforge: build, boot and verify Xen systems from pinned sources."""

__version__ = "0.1.0"

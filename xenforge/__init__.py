"""xenforge: build, boot and verify Xen systems from pinned sources."""

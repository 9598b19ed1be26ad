"""The build cache (:class:`Cache`), its store interface and the state directory."""

from xenforge.cache.cache import Cache, default_root

__all__ = ["Cache", "default_root"]

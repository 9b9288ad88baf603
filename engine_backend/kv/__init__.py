"""Jenga KV-cache management: specs per layer type, a large-page pool, per-type small pages."""
from .manager import NULL_PAGE, KVCacheManager
from .spec import KVSpec, large_page_elems, specs_for_model
from .storage import PagedKVStorage

__all__ = ["KVCacheManager", "KVSpec", "NULL_PAGE", "PagedKVStorage", "large_page_elems", "specs_for_model"]

"""Jenga KV-cache management: specs per layer type, a large-page pool, per-type small pages."""
from .manager import KVCacheManager
from .single_type import NULL_PAGE
from .spec import FullAttentionSpec, KVSpec, SlidingWindowSpec, large_page_elems, specs_for_model
from .storage import PagedKVStorage

__all__ = ["FullAttentionSpec", "KVCacheManager", "KVSpec", "NULL_PAGE", "PagedKVStorage", "SlidingWindowSpec",
           "large_page_elems", "specs_for_model"]

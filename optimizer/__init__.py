"""Prefix-sharing reordering for LLM queries over tables (GGR, arXiv 2403.05821, and a faster equivalent).

``reorder(df)`` returns a ``ReorderPlan``: submit ``df``'s rows in ``plan.order``, the fields of each in
``plan.fields[i]``, and consecutive prompts share long prefixes for the engine's prefix cache.
"""
from .fd import fd_groups, functional_dependencies
from .metrics import cell_hit_rate, prefix_hit_count, token_hit_rate, trie_hit_rate
from .reorder import ReorderPlan, reorder
from .stats import ColumnStats, column_stats

__all__ = ["reorder", "ReorderPlan", "column_stats", "ColumnStats", "functional_dependencies", "fd_groups",
           "prefix_hit_count", "cell_hit_rate", "trie_hit_rate", "token_hit_rate"]

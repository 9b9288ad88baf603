"""KV-cache specs: one per group of layers that share a page shape.

Jenga's first observation: layers of different types (full attention, sliding window,
later state-space layers) need differently sized pages and different caching rules.
We group layers by (window, kv heads, head dim); each group gets one ``KVSpec`` whose
small page holds ``block_size`` tokens of K and V for every layer in the group.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KVSpec:
    name: str
    layers: tuple[int, ...]  # model layer indices stored in this group's pages
    num_kv_heads: int
    head_dim: int
    window: int | None  # None: full attention, keeps the whole prefix
    block_size: int
    dtype: torch.dtype

    @property
    def is_sliding(self) -> bool:
        return self.window is not None

    @property
    def page_elems(self) -> int:
        return len(self.layers) * 2 * self.block_size * self.num_kv_heads * self.head_dim

    @property
    def page_bytes(self) -> int:
        return self.page_elems * self.dtype.itemsize

    def first_needed_block(self, num_computed: int) -> int:
        """First block the next query (at position ``num_computed``) can still attend to.

        A query at position p sees keys at positions > p - window; blocks wholly before
        that can be released (sliding window) and need not be cached hits.
        """
        if self.window is None:
            return 0
        return max(0, num_computed - self.window + 1) // self.block_size

    def blocks_for_tokens(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)


def specs_for_model(config, block_size: int, dtype: torch.dtype) -> list[KVSpec]:
    """Group the model's layers into KV specs (one per distinct page shape and rule)."""
    groups: dict[tuple, list[int]] = {}
    for layer in range(config.num_layers):
        key = (config.window(layer), config.num_kv_heads(layer), config.head_dim(layer))
        groups.setdefault(key, []).append(layer)
    specs = []
    kinds_seen: dict[str, int] = {}
    for (window, heads, head_dim), layers in groups.items():
        kind = "full_attention" if window is None else "sliding_attention"
        n = kinds_seen.get(kind, 0)
        kinds_seen[kind] = n + 1
        name = kind if n == 0 else f"{kind}_{n}"
        specs.append(KVSpec(name, tuple(layers), heads, head_dim, window, block_size, dtype))
    return specs


def large_page_elems(specs: list[KVSpec]) -> int:
    """Jenga's large page: the least common multiple of every group's page size."""
    return math.lcm(*(s.page_elems for s in specs))

"""KV-cache specs: one per group of layers that share a page shape and a caching rule.

Jenga's first observation: layers of different types (full attention, sliding window,
later state-space layers) need differently sized pages and different caching rules.
We group layers by (type, window, kv heads, head dim); each group gets one spec whose
small page holds ``block_size`` tokens of K and V for every layer in the group.

A spec is data plus the rules of its type that attention and the allocators ask about:
which keys a query sees, which blocks a request still needs, which cached blocks make a
usable prefix. A new layer type is a new subclass (and a manager in ``single_type.py``);
nothing else branches on the type.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KVSpec:
    """What every layer type shares: the page shape. Subclasses give the type's rules."""

    name: str
    layers: tuple[int, ...]  # model layer indices stored in this group's pages
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: torch.dtype

    window = None  # keys a query sees behind it; None: all of them (reporting only, not a branch)
    shares_prefix = False  # whether queries of different requests may read one copy of shared leading pages

    @property
    def page_elems(self) -> int:
        return len(self.layers) * 2 * self.block_size * self.num_kv_heads * self.head_dim

    @property
    def page_bytes(self) -> int:
        return self.page_elems * self.dtype.itemsize

    def blocks_for_tokens(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def first_needed_block(self, num_computed: int) -> int:
        """First block the next query (at position ``num_computed``) can still attend to."""
        raise NotImplementedError

    def visible(self, kv_pos: torch.Tensor, q_pos: torch.Tensor) -> torch.Tensor:
        """Which keys each query attends to (broadcasting positions)."""
        raise NotImplementedError


@dataclass(frozen=True)
class FullAttentionSpec(KVSpec):
    """Causal attention over the whole prefix: every block stays, a prefix hit needs every block."""

    shares_prefix = True

    def first_needed_block(self, num_computed: int) -> int:
        return 0

    def visible(self, kv_pos, q_pos):
        return kv_pos <= q_pos


@dataclass(frozen=True)
class SlidingWindowSpec(KVSpec):
    """A query at position p sees keys at positions > p - window; older blocks are released, and a
    prefix hit only needs the blocks the next query can see."""

    window: int = 0

    def first_needed_block(self, num_computed: int) -> int:
        return max(0, num_computed - self.window + 1) // self.block_size

    def visible(self, kv_pos, q_pos):
        return (kv_pos <= q_pos) & (kv_pos > q_pos - self.window)


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
        if window is None:
            specs.append(FullAttentionSpec(name, tuple(layers), heads, head_dim, block_size, dtype))
        else:
            specs.append(SlidingWindowSpec(name, tuple(layers), heads, head_dim, block_size, dtype, window=window))
    return specs


def large_page_elems(specs: list[KVSpec]) -> int:
    """Jenga's large page: the least common multiple of every group's page size."""
    return math.lcm(*(s.page_elems for s in specs))

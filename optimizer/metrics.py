"""How much of each prompt a prefix cache could reuse.

- ``prefix_hit_count``: GGR's objective (PHC). Row i hits on its leading cells that equal, field name and
  value, the cells in the same positions of row i-1; each hit cell counts len(value)^2.
- ``cell_hit_rate``: PHC over the sum of len(cell)^2 of all cells (the most a reordering could reach).
- ``trie_hit_rate``: characters of each concatenated row found as a prefix of some earlier row.
- ``token_hit_rate``: what a block prefix cache (vLLM / our engine) serves: per prompt the longest
  block-aligned prefix equal to a prefix of an earlier prompt, always leaving one token to compute.
"""
from __future__ import annotations

import bisect

import numpy as np

from .stats import Encoded, encode


def _field_matrix(enc: Encoded, fields) -> np.ndarray:
    """plan.fields (names) as an (n_rows, n_cols) matrix of column indices; most rows share a few orders."""
    pos = {c: j for j, c in enumerate(enc.columns)}
    memo: dict[tuple, list[int]] = {}
    out = np.empty((len(fields), len(enc.columns)), dtype=np.int64)
    for i, f in enumerate(fields):
        idx = memo.get(f)
        if idx is None:
            idx = memo[f] = [pos[c] for c in f]
        out[i] = idx
    return out


def _phc_and_total(enc: Encoded, order, fields) -> tuple[int, int]:
    n, m = enc.codes.shape
    if n == 0 or m == 0:
        return 0, 0
    offsets = np.cumsum([0] + [len(v) for v in enc.values[:-1]])
    len2 = np.concatenate(enc.len2)
    total = int(sum(int(l2[enc.codes[:, j]].sum()) for j, l2 in enumerate(enc.len2)))
    F = _field_matrix(enc, fields)                          # column of each output cell
    G = enc.codes[np.asarray(order)[:, None], F] + offsets[F]  # global value id of each output cell
    same = (F[1:] == F[:-1]) & (G[1:] == G[:-1])
    lead = np.cumprod(same, axis=1).astype(bool)            # only the unbroken leading run counts
    return int(len2[G[1:]][lead].sum()), total


def prefix_hit_count(df, plan) -> int:
    enc = df if isinstance(df, Encoded) else encode(df)
    return _phc_and_total(enc, plan.order, plan.fields)[0]


def cell_hit_rate(df, plan) -> float:
    enc = df if isinstance(df, Encoded) else encode(df)
    phc, total = _phc_and_total(enc, plan.order, plan.fields)
    return phc / total if total else 0.0


def _lcp(a: str, b: str) -> int:
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:  # binary search on slice equality: C-speed compares, log(len) steps
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def trie_hit_rate(strings: list[str]) -> float:
    """Sum over strings of the longest prefix shared with ANY earlier string, over the total length.

    The longest prefix shared with a set of strings is shared with one of its two sorted neighbours, so a
    sorted list stands in for the trie."""
    seen: list[str] = []
    hit = total = 0
    for s in strings:
        total += len(s)
        i = bisect.bisect_left(seen, s)
        best = 0
        if i < len(seen):
            best = _lcp(s, seen[i])
        if i > 0:
            best = max(best, _lcp(s, seen[i - 1]))
        hit += best
        seen.insert(i, s)
    return hit / total if total else 0.0


def token_hit_rate(token_lists, block_size: int = 16) -> float:
    """Hit rate of a block prefix cache that keeps every full block it has seen (no eviction)."""
    blocks: dict[tuple, int] = {}  # (parent block id, block tokens) -> block id: the engine's hash chain
    hit = total = 0
    for toks in token_lists:
        toks = list(toks)
        total += len(toks)
        parent, matching = -1, True
        for k in range(len(toks) // block_size):
            key = (parent, tuple(toks[k * block_size:(k + 1) * block_size]))
            bid = blocks.get(key)
            # a hit needs every earlier block hit too, and must leave the last token to compute
            if matching and bid is not None and (k + 1) * block_size <= len(toks) - 1:
                hit += block_size
            else:
                matching = False
            if bid is None:
                bid = blocks[key] = len(blocks)
            parent = bid
    return hit / total if total else 0.0

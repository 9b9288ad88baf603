"""Greedy Group Recursion (GGR), as published (arXiv 2403.05821, Algorithm 1), in plain Python.

At each call: count every (column, value) of the rows, take the value v of column c with the highest
HitCount = (len(v)^2 + len^2 of the values v determines through FDs) * (count(v) - 1); put the rows holding v
first, led by c and the columns c determines; recurse on those rows with the other columns (column depth + 1)
and on the rest with all columns (row depth + 1). Depth limits, too few rows or a best score below the
threshold end the recursion in a fallback: columns by expected hit, rows sorted lexicographically.
Counts are recomputed on every call, as published; ``fast.py`` makes the same choices from counts kept up
to date instead.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .stats import Encoded

# The limits the published evaluator runs GGR with (lynnliu030/ADRS llm_sql: row_stop=4, col_stop=2,
# early_stop=100000, distinct_value_threshold=0.7). reorder()'s own defaults search without depth limits.
PUBLISHED_LIMITS = dict(row_stop=4, col_stop=2, min_score=100_000, distinct_threshold=0.7)


@dataclass
class Problem:
    """What every solver needs: the encoded table, the columns to search, FDs as column indices, limits."""
    enc: Encoded
    cols: list[int]
    deps: dict[int, list[int]]          # c -> columns c determines (column order)
    mutual: dict[int, set[int]]         # c -> columns that determine c and are determined by it
    row_stop: float = float("inf")
    col_stop: float = float("inf")
    min_score: int = 1
    min_rows: int = 2
    _gl2: dict = field(default_factory=dict)
    _rows: list = None

    @property
    def rows(self) -> list[list[int]]:
        if self._rows is None:
            self._rows = self.enc.codes.tolist()
        return self._rows

    def global_ids(self) -> tuple[list[list[int]], list[int], list[int], list[int]]:
        """Rows as value ids unique across columns (code + column offset), with id -> column, id -> code,
        id -> len^2: one Counter over a node's cells then counts every column at once."""
        got = self._gl2.get("global")
        if got is None:
            enc = self.enc
            cards = [len(v) for v in enc.values]
            offs = np.concatenate([[0], np.cumsum(cards)[:-1]]).astype(np.int64)
            col = np.repeat(np.arange(len(cards)), cards)
            got = self._gl2["global"] = ((enc.codes + offs).tolist(), col.tolist(),
                                         (np.arange(len(col)) - offs[col]).tolist(),
                                         np.concatenate(enc.len2).tolist() if cards else [])
        return got

    def lead(self, c: int, cols: list[int]) -> list[int]:
        """c and the still-unplaced columns it determines: they lead the rows holding c's value."""
        return [c] + [d for d in self.deps.get(c, ()) if d in cols]

    def group_len2(self, c: int, cols: list[int]) -> np.ndarray:
        """Per value of c: len^2 of the value plus len^2 of each value it determines (FD-inferred)."""
        lead = tuple(self.lead(c, cols))
        g = self._gl2.get(lead)
        if g is None:
            enc = self.enc
            g = enc.len2[c].copy()
            for d in lead[1:]:
                det = np.zeros(len(enc.values[c]), dtype=np.int64)
                det[enc.codes[:, c]] = enc.codes[:, d]   # exact FD: one d value per c value
                g += enc.len2[d][det]
            self._gl2[lead] = g
        return g

    def split_plan(self, c: int, cols: list[int], order_lead) -> tuple[list[int], list[int], list[int]]:
        """(lead ordered by ``order_lead``, the other columns, group_len2 as a list), memoised per (c, cols)."""
        key = ("split", c, tuple(cols))
        got = self._gl2.get(key)
        if got is None:
            cols = list(cols)
            lead = order_lead(self, self.lead(c, cols))
            got = self._gl2[key] = (lead, [x for x in cols if x not in lead], self.group_len2_list(c, cols))
        return got

    def group_len2_list(self, c: int, cols: list[int]) -> list[int]:
        key = ("list", tuple(self.lead(c, cols)))
        g = self._gl2.get(key)
        if g is None:
            g = self._gl2[key] = self.group_len2(c, cols).tolist()
        return g

    def len2_list(self, c: int) -> list[int]:
        key = ("len2", c)
        g = self._gl2.get(key)
        if g is None:
            g = self._gl2[key] = self.enc.len2[c].tolist()
        return g

    def fallback_columns(self, col_scores: dict[int, int], cols: list[int]) -> list[int]:
        """Columns by expected hit (descending, ties in column order); FD groups move as one unit."""
        units, placed = [], set()
        for c in cols:
            if c in placed:
                continue
            mc = self.mutual.get(c)
            unit = [c] + [d for d in cols if d in mc and d not in placed] if mc else [c]
            placed.update(unit)
            units.append((-sum(col_scores[d] for d in unit), len(units), unit))
        return [c for _, _, unit in sorted(units) for c in unit]


def fallback(prob: Problem, rows: list[int], cols: list[int], out: list) -> None:
    R = prob.rows
    scores = {}
    for c in cols:
        l2 = prob.enc.len2[c]
        scores[c] = sum(int(l2[v]) * (k - 1) for v, k in Counter(R[r][c] for r in rows).items())
    order = prob.fallback_columns(scores, cols)
    for r in sorted(rows, key=lambda r: tuple(R[r][c] for c in order)):
        out.append((r, tuple(order)))


def best_value(prob: Problem, rows: list[int], cols: list[int]) -> tuple[int, int, int]:
    """(score, column, value) of the highest HitCount; ties go to the earlier column, then the smaller value."""
    R = prob.rows
    best = (-1, 0, 0)
    for c in cols:
        g = prob.group_len2(c, cols)
        for v, k in Counter(R[r][c] for r in rows).items():
            s = int(g[v]) * (k - 1)
            if s > best[0] or (s == best[0] and c == best[1] and v < best[2]):
                best = (s, c, v)
    return best


def ggr_node(prob: Problem, rows: list[int], cols: list[int], rdepth: int, cdepth: int, out: list) -> None:
    """Append (row, field order) pairs for ``rows`` to ``out``. The row recursion is a loop (it can be long)."""
    R = prob.rows
    while True:
        if len(rows) < prob.min_rows or not cols or rdepth >= prob.row_stop or cdepth >= prob.col_stop:
            return fallback(prob, rows, cols, out)
        score, c, v = best_value(prob, rows, cols)
        if score < max(1, prob.min_score):
            return fallback(prob, rows, cols, out)
        lead = prob.lead(c, cols)
        group = [r for r in rows if R[r][c] == v]
        rows = [r for r in rows if R[r][c] != v]
        sub: list = []
        ggr_node(prob, group, [x for x in cols if x not in lead], rdepth, cdepth + 1, sub)
        head = tuple(lead)
        out.extend((r, head + f) for r, f in sub)
        rdepth += 1


def solve(prob: Problem) -> list[tuple[int, tuple[int, ...]]]:
    out: list = []
    ggr_node(prob, list(range(prob.enc.n_rows)), list(prob.cols), 0, 0, out)
    return out

"""fast.py's "split" recursion run level by level: every node of one level handled together in numpy.

The recursion makes thousands of small nodes (a beer's reviews, then those of its reviews with one rating,
...), and one Python call per node costs more than its counting. Here the rows still to place (the frontier)
are kept grouped by node, and one round handles all nodes at once: (node, value) counts come from one
bincount or hash-factorize per column, each node's column from one argmax, the children's order from one
lexsort. A node owns a fixed span of output positions, so a finished row takes its final place at once, and
each row's field order is a row of column numbers (``fields``), filled in as leads are placed.

The plan is the one the per-node recursion makes (same choices, same ties): per round each node is
finished (tiny: one or two rows or no column left; fallback: limits reached or nothing scores) or split on
its best column: the rows whose value repeats go first, one child per value in lead order searching the
other columns, and the rows whose value is unique stay as the node, one row depth deeper, after them.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

TINY = 2  # nodes this small are finished directly


class _Table:
    """The rows being solved: codes and len^2 per searched column (local column numbers 0..k-1), FDs."""

    def __init__(self, prob, rows: np.ndarray, order_lead):
        self.prob, self.order_lead = prob, order_lead
        self.cols = np.asarray(prob.cols, dtype=np.int64)
        enc = prob.enc
        self.codes = enc.codes[rows][:, self.cols]
        self.len2 = np.stack([enc.len2[c][self.codes[:, j]] for j, c in enumerate(self.cols)], axis=1)
        self.codes_t = np.ascontiguousarray(self.codes.T)  # one column's codes contiguous: cheaper gathers
        self.len2_t = np.ascontiguousarray(self.len2.T)
        self.card = np.array([len(enc.values[c]) for c in self.cols], dtype=np.int64)
        self.local = {int(c): j for j, c in enumerate(self.cols)}
        self.deps = [[self.local[d] for d in prob.deps.get(int(c), ()) if d in self.local] for c in self.cols]
        self._plans: dict = {}

    def plan(self, cols_row: np.ndarray, j: int) -> tuple[list[int], np.ndarray]:
        """(lead as local columns, the columns left to the children) for a split on j: fast.py's lead."""
        key = (cols_row.tobytes(), j)
        got = self._plans.get(key)
        if got is None:
            cols = [int(self.cols[i]) for i in np.flatnonzero(cols_row)]
            lead = self.order_lead(self.prob, self.prob.lead(int(self.cols[j]), cols))
            lead = [self.local[c] for c in lead]
            rest = cols_row.copy()
            rest[lead] = False
            got = self._plans[key] = (lead, rest)
        return got

    def fallback_order(self, cols_row: np.ndarray, scores: np.ndarray) -> list[int]:
        """GGR's fallback column order (by expected hit, FD groups together) as local columns."""
        glob = [int(self.cols[j]) for j in np.flatnonzero(cols_row)]
        sc = dict(zip(glob, scores[cols_row].astype(np.int64).tolist()))
        return [self.local[c] for c in self.prob.fallback_columns(sc, glob)]


class _Frontier:
    """The rows still to place, grouped by node (``node_of`` never decreases), and per node: its first
    output position, row and column depths, the columns still searched (``cols``) and those in which a
    value may still repeat (``live``: a column with no repeat in a node has none in its children)."""

    def __init__(self, rows, node_of, start, rdepth, cdepth, cols, live):
        self.rows, self.node_of, self.start = rows, node_of, start
        self.rdepth, self.cdepth, self.cols, self.live = rdepth, cdepth, cols, live
        self.size = np.bincount(node_of, minlength=len(start))
        self.seg = np.cumsum(self.size) - self.size          # each node's first index in rows
        self.ncols = cols.sum(axis=1)

    @classmethod
    def root(cls, n: int, k: int) -> _Frontier:
        one = np.zeros(1 if n else 0, dtype=np.int64)
        cols = np.ones((len(one), k), dtype=bool)
        return cls(np.arange(n), np.zeros(n, dtype=np.int64), one, one.copy(), one.copy(), cols, cols.copy())

    def members(self, mask: np.ndarray) -> np.ndarray:
        """Indices (into rows) of the rows of the nodes in ``mask``."""
        return np.flatnonzero(mask[self.node_of])

    def pos_in_node(self, at: np.ndarray) -> np.ndarray:
        return at - self.seg[self.node_of[at]]


class _Plan:
    """The output being built: each row's output position and field order (local columns)."""

    def __init__(self, n: int, k: int):
        self.pos = np.zeros(n, dtype=np.int64)
        self.fields = np.zeros((n, k), dtype=np.int64)

    def place_fields(self, rows: np.ndarray, order: np.ndarray, first: np.ndarray, count: np.ndarray) -> None:
        """fields[r, first[i] + t] = order[i, t] for t < count[i]: row r's next fields, in that order."""
        for t in range(order.shape[1]):
            ok = count > t
            if not ok.any():
                return
            self.fields[rows[ok], first[ok] + t] = order[ok, t]

    def pairs(self, tab: _Table, rows: np.ndarray) -> list[tuple[int, tuple[int, ...]]]:
        order = np.empty(len(self.pos), dtype=np.int64)
        order[self.pos] = np.arange(len(self.pos))
        return list(zip(rows[order].tolist(), _as_tuples(tab.cols[self.fields[order]])))


def solve_split(prob, rows: np.ndarray, order_lead) -> list[tuple[int, tuple[int, ...]]]:
    """fast.py's "split" plan for ``rows``: (row, field order) pairs in submission order."""
    if not len(prob.cols):
        return [(r, ()) for r in rows.tolist()]
    tab = _Table(prob, rows, order_lead)
    n, k = tab.codes.shape
    plan = _Plan(n, k)
    front = _Frontier.root(n, k)
    threshold = max(1, prob.min_score)
    while len(front.rows):
        tiny = (front.size <= TINY) | (front.ncols == 0)
        limited = ~tiny & ((front.size < prob.min_rows) | (front.rdepth >= prob.row_stop)
                           | (front.cdepth >= prob.col_stop))
        # without limits a node falls back only when nothing repeats, so its plain scores are all zero
        need_plain = bool(limited.any()) or threshold > 1
        score, plain, repeats = _scores(tab, front, front.live & ~tiny[:, None], need_plain)
        best_j = np.argmax(score, axis=1)  # the first best column, in column order
        fallback = limited | (~tiny & (score[np.arange(len(best_j)), best_j] < threshold))
        _finish_tiny(tab, plan, front, tiny)
        _finish_fallback(tab, plan, front, fallback, plain)
        split = ~tiny & ~fallback
        if not split.any():
            break
        front.live &= repeats
        front = _split(tab, plan, front, split, best_j)
    return plan.pairs(tab, rows)


def _pair_labels(key: np.ndarray, n_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """A label per (node, value) key and each label's count: by bincount where the key space is small, by a
    hash factorize where it is not (both linear; a sort is not)."""
    if n_keys <= 4 * len(key) + 1024:
        cnt = np.bincount(key, minlength=n_keys)
        present = np.flatnonzero(cnt)
        relabel = np.zeros(n_keys, dtype=np.int64)
        relabel[present] = np.arange(len(present))
        return relabel[key], cnt[present]
    labels, _ = pd.factorize(key)
    return labels, np.bincount(labels)


def _scores(tab: _Table, front: _Frontier, count: np.ndarray, need_plain: bool):
    """Per node and column: the split score (len^2 plus the FD-inferred len^2 of each repeated value, times
    count - 1), the plain score (len^2 only, the fallback's order; only if needed) and whether any value
    repeats. Only the (node, column) pairs in ``count`` are counted."""
    nn, k = count.shape
    score = np.zeros((nn, k))
    plain = np.zeros((nn, k))
    repeats = np.zeros((nn, k), dtype=bool)
    counted = count[front.node_of]
    for j in range(k):
        at = np.flatnonzero(counted[:, j])
        if not len(at):
            continue
        nodes, r = front.node_of[at], front.rows[at]
        labels, cnt = _pair_labels(nodes * tab.card[j] + tab.codes_t[j][r], nn * tab.card[j])
        one = np.empty(len(cnt), dtype=np.int64)
        one[labels] = np.arange(len(at))  # one row of each (node, value)
        repeated = cnt >= 2
        one, extra = one[repeated], cnt[repeated] - 1
        if not len(one):
            continue
        r, nodes = r[one], nodes[one]
        l2 = tab.len2_t[j][r]
        g = l2.copy()
        for d in tab.deps[j]:  # the values it determines, where their column is still searched
            g += tab.len2_t[d][r] * front.cols[nodes, d]
        score[:, j] = np.bincount(nodes, weights=g * extra, minlength=nn)
        if need_plain:
            plain[:, j] = np.bincount(nodes, weights=l2 * extra, minlength=nn)
        repeats[nodes, j] = True
    score[~front.cols] = 0
    return score, plain, repeats


def _split(tab: _Table, plan: _Plan, front: _Frontier, split: np.ndarray, best_j: np.ndarray) -> _Frontier:
    """Split each node in ``split`` on its best column; the next round's frontier."""
    at = front.members(split)
    rows, nodes = front.rows[at], front.node_of[at]
    val = tab.codes[rows, best_j[nodes]]
    wide = int(tab.card.max()) + 1
    labels, cnt = _pair_labels(nodes * wide + val, len(front.start) * wide)
    grouped = cnt[labels] >= 2
    leads, rest_cols, plan_of = _node_plans(tab, front, split, best_j)
    row_lead = leads[plan_of[nodes]]  # per row its node's lead (padded with -1)
    # grouped rows first, in lead order (one child per value, neighbours sharing coarser lead cells)
    keys = [(~grouped).astype(np.int64)]
    for t in range(leads.shape[1]):
        lt = row_lead[:, t]
        keys.append(np.where(grouped & (lt >= 0), tab.codes[rows, np.maximum(lt, 0)], 0))
    perm = np.lexsort(tuple(keys[::-1]) + (nodes,))
    rows, nodes, grouped, val, row_lead = rows[perm], nodes[perm], grouped[perm], val[perm], row_lead[perm]
    placed = tab.codes.shape[1] - front.ncols
    g = np.flatnonzero(grouped)
    plan.place_fields(rows[g], row_lead[g], placed[nodes[g]], (row_lead[g] >= 0).sum(axis=1))

    new = np.ones(len(rows), dtype=bool)  # where a child or a node's unique-value rest begins
    new[1:] = (nodes[1:] != nodes[:-1]) | (grouped[1:] != grouped[:-1]) | (grouped[1:] & (val[1:] != val[:-1]))
    firsts = np.flatnonzero(new)
    node_first = np.zeros(len(front.start), dtype=np.int64)
    node_first[nodes[firsts[::-1]]] = firsts[::-1]  # each old node's first index (the last write wins)
    old, child = nodes[firsts], grouped[firsts]
    cols = np.where(child[:, None], rest_cols[plan_of[old]], front.cols[old])
    return _Frontier(rows, np.cumsum(new) - 1, front.start[old] + firsts - node_first[old],
                     front.rdepth[old] + ~child, front.cdepth[old] + child, cols, front.live[old] & cols)


def _node_plans(tab: _Table, front: _Frontier, split: np.ndarray, best_j: np.ndarray):
    """Leads (padded with -1) and the children's columns, one per distinct (columns, best column) among
    the split nodes, and each node's index into them."""
    k = tab.codes.shape[1]
    keys = np.column_stack([front.cols[split], best_j[split]])
    first, kind = _row_kinds(keys, max(k, 2))
    plans = [tab.plan(u[:k].astype(bool), int(u[k])) for u in keys[first]]
    leads = np.full((len(plans), max(len(lead) for lead, _ in plans)), -1, dtype=np.int64)
    for i, (lead, _) in enumerate(plans):
        leads[i, :len(lead)] = lead
    plan_of = np.zeros(len(split), dtype=np.int64)
    plan_of[split] = kind
    return leads, np.array([rest for _, rest in plans]).reshape(len(plans), k), plan_of


def _finish_tiny(tab: _Table, plan: _Plan, front: _Frontier, tiny: np.ndarray) -> None:
    """One row: its columns in column order. Two: the columns they agree on first, longest first. Rows
    stay in frontier order."""
    idx = np.flatnonzero(tiny)
    if not len(idx):
        return
    at = front.members(tiny)
    nodes = front.node_of[at]
    plan.pos[front.rows[at]] = front.start[nodes] + front.pos_in_node(at)
    a = front.rows[front.seg[idx]]
    b = front.rows[front.seg[idx] + np.minimum(front.size[idx], 2) - 1]
    cols = front.cols[idx]
    same = (tab.codes[a] == tab.codes[b]) & cols & (front.size[idx] == 2)[:, None]
    big = np.iinfo(np.int64).max // 4
    order = np.argsort(np.where(same, -tab.len2[a], np.where(cols, big, 2 * big)), axis=1, kind="stable")
    which = np.zeros(len(tiny), dtype=np.int64)
    which[idx] = np.arange(len(idx))
    placed = tab.codes.shape[1] - front.ncols
    plan.place_fields(front.rows[at], order[which[nodes]], placed[nodes], front.ncols[nodes])


def _finish_fallback(tab: _Table, plan: _Plan, front: _Frontier, fallback: np.ndarray, plain: np.ndarray) -> None:
    """Limits reached or nothing repeats: columns by expected hit (GGR's fallback), rows sorted on them."""
    idx = np.flatnonzero(fallback)
    if not len(idx):
        return
    k = tab.codes.shape[1]
    cols = front.cols[idx]
    # nodes with the same columns and scores get the same order: one fallback_columns call per kind
    kinds = np.column_stack([cols, np.where(cols, plain[idx], 0)]).astype(np.int64)
    first, kind = _row_kinds(kinds, int(kinds.max()) + 1)
    kind_order = np.zeros((len(first), k), dtype=np.int64)
    for i, u in enumerate(kinds[first]):
        got = tab.fallback_order(u[:k].astype(bool), u[k:])
        kind_order[i, :len(got)] = got
    which = np.zeros(len(fallback), dtype=np.int64)
    which[idx] = np.arange(len(idx))
    at = front.members(fallback)
    rows, nodes = front.rows[at], front.node_of[at]
    order, count = kind_order[kind[which[nodes]]], front.ncols[nodes]
    keys = [np.where(t < count, tab.codes[rows, order[:, t]], 0) for t in range(k)]
    perm = np.lexsort(tuple(keys[::-1]) + (nodes,))
    at, rows, nodes, order, count = at[perm], rows[perm], nodes[perm], order[perm], count[perm]
    plan.pos[rows] = front.start[nodes] + np.arange(len(at)) - np.searchsorted(nodes, nodes)
    plan.place_fields(rows, order, (k - front.ncols)[nodes], count)


def _as_tuples(fields: np.ndarray) -> list[tuple[int, ...]]:
    """Each row as a tuple; rows share few distinct orders, so each distinct one is built once."""
    if not fields.size:
        return [()] * len(fields)
    first, kind = _row_kinds(fields, int(fields.max()) + 1)
    distinct = [tuple(f) for f in fields[first].tolist()]
    return [distinct[i] for i in kind.tolist()]


def _row_kinds(a: np.ndarray, base: int) -> tuple[np.ndarray, np.ndarray]:
    """(the first row of each distinct row of ``a``, each row's kind) for entries in [0, base): a hash
    factorize of one integer per row where a row fits in 63 bits, of the rows' bytes where it does not
    (np.unique(axis=0) sorts the rows: far slower)."""
    if a.shape[1] * np.log2(max(base, 2)) < 63:
        key = a.astype(np.int64) @ (base ** np.arange(a.shape[1], dtype=np.int64))
    else:
        key = np.array([r.tobytes() for r in np.ascontiguousarray(a)], dtype=object)
    kind, _ = pd.factorize(key)
    first = np.empty(kind.max() + 1 if len(kind) else 0, dtype=np.int64)
    first[kind[::-1]] = np.arange(len(kind))[::-1]  # the first row of each kind (the last write wins)
    return first, kind

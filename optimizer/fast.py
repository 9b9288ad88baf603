"""The fast reordering: GGR's recursion made cheaper and better-scoring, from two candidates.

"split" (the usual winner): each recursion node counts every column once and picks the COLUMN whose values
would share the most, sum over its values of (len^2 + FD-inferred len^2) * (count - 1); all its repeated
values split at once, each value's rows a child led by the column (and the columns it determines) recursing
on the other columns, while rows whose value is unique stay together and recurse on all columns. Scoring
whole columns stops a short column with a few very common values (a rating) from cutting a long one (a beer
name) into pieces, which is where GGR's one-value greedy loses hits. In a lead, determined columns with
fewer distinct values go first (a beer's style before its name) and children are sorted on the lead, so
neighbouring children share those coarser cells too (the FD group stays contiguous). It runs level by level
(levels.py): all nodes of one recursion level are counted, scored and split together in numpy, as one
Python call per node (thousands of small ones on beer) cost more than the counting itself.

"value": GGR's one-value steps, but the value is taken from the column with the best whole-column score, and
counts are kept up to date instead of recounted. It wins where one very common value should be split off
alone and the rest grouped on another column.

``solve`` keeps the candidate with the higher prefix hit count. On tables of up to GGR_ROWS rows GGR itself
is a third candidate (same choices as ggr.py, counts kept up to date), so there fast is never below GGR by
construction; above, it is measured (tests, bench). Up to SAMPLE rows the candidates run on every row; on
larger tables they are compared on a random sample and the winner runs on every row.
"""
from __future__ import annotations

from operator import itemgetter

import numpy as np

from .ggr import Problem, ggr_node
from .levels import solve_split

TINY = 2    # nodes this small are finished directly
SAMPLE = 2000  # up to this many rows the candidates run in full; above, they are compared on SAMPLE/2 rows
GGR_ROWS = 500  # up to this many rows GGR itself is a candidate too (cheap there): fast is never below it
SMALL = 40  # below this many rows plain Python beats numpy's per-call overhead (value and ggr candidates)


def _order_lead(prob: Problem, lead: list[int]) -> list[int]:
    """Coarser determined columns first; the picked column and those equivalent to it keep their order."""
    c = lead[0]
    card = lambda d: len(prob.enc.values[d])
    coarse = sorted((d for d in lead[1:] if card(d) < card(c)), key=lambda d: (card(d), d))
    return coarse + [d for d in lead if d not in coarse]


def _fallback(prob: Problem, rows: np.ndarray, cols: list[int], cnts, prefix: tuple, out: list) -> None:
    """Depth limits reached: columns by expected hit, rows sorted on them (as GGR's fallback)."""
    enc = prob.enc
    scores = {}
    for c, k in zip(cols, cnts):
        present = k > 0
        scores[c] = int((enc.len2[c][present] * (k[present] - 1)).sum())
    order = prob.fallback_columns(scores, cols)
    if order and len(rows) > 1:
        rows = rows[np.lexsort(enc.codes[np.ix_(rows, order[::-1])].T)]
    head = prefix + tuple(order)
    out.extend((r, head) for r in rows.tolist())


def _tiny(prob: Problem, rows: list[int], cols: list[int], prefix: tuple, out: list) -> None:
    """One or two rows: the columns two rows agree on go first, longest first."""
    if len(rows) == 2 and cols:
        G, _, _, gl2 = prob.global_ids()
        a, b = G[rows[0]], G[rows[1]]
        same = sorted((c for c in cols if a[c] == b[c]), key=lambda c: -gl2[a[c]])
        if same:
            cols = same + [c for c in cols if c not in same]
    head = prefix + tuple(cols)
    out.extend((r, head) for r in rows)


# --- the value-level candidate ------------------------------------------------------------------------
# Splitting whole columns loses to GGR's one-value steps where a column has one very common value and the
# rest of its rows group better on another column. This candidate keeps GGR's one-value steps but takes the
# value from the column with the best whole-column score (so short, common values no longer cut long
# groups apart), with counts kept up to date rather than recounted. solve() keeps the better of the two.

def _py_counts(R, rows: list[int], cols: list[int]) -> list[dict[int, int]]:
    """Per column, value -> count over ``rows`` (a plain dict: Counter's setup costs more on tiny nodes)."""
    vals = [R[r] for r in rows]
    cnts = []
    for c in cols:
        d: dict[int, int] = {}
        for v in map(itemgetter(c), vals):
            d[v] = d.get(v, 0) + 1
        cnts.append(d)
    return cnts


def hybrid_py(prob: Problem, rows: list[int], cols: list[int], rdepth: int, cdepth: int,
              prefix: tuple, out: list) -> None:
    """hybrid_node's algorithm on Python lists, for small nodes: counted once, then decremented."""
    R = prob.rows
    if len(rows) <= TINY or not cols:
        return _tiny(prob, rows, cols, prefix, out)
    cnts = _py_counts(R, rows, cols)
    limited = len(rows) < prob.min_rows or rdepth >= prob.row_stop or cdepth >= prob.col_stop
    gls = [prob.group_len2_list(c, cols) for c in cols]
    colscore = [sum(g[v] * (k - 1) for v, k in d.items()) for g, d in zip(gls, cnts)]
    threshold = max(1, prob.min_score)
    while True:
        if len(rows) <= TINY:
            return _tiny(prob, rows, cols, prefix, out)
        best = max(colscore)
        if limited or best < threshold:
            scores = {c: sum(prob.len2_list(c)[v] * (k - 1) for v, k in d.items() if k) for c, d in zip(cols, cnts)}
            order = prob.fallback_columns(scores, cols)
            head = prefix + tuple(order)
            out.extend((r, head) for r in sorted(rows, key=lambda r: [R[r][c] for c in order]))
            return
        j = colscore.index(best)
        c, g, d = cols[j], gls[j], cnts[j]
        v = max(sorted(d), key=lambda u: g[u] * (d[u] - 1))  # first of the best: the smallest value
        group = [r for r in rows if R[r][c] == v]
        rows = [r for r in rows if R[r][c] != v]
        for jj, cc in enumerate(cols):  # take the group's cells out of the counts and scores
            dd, gg = cnts[jj], gls[jj]
            for r in group:
                u = R[r][cc]
                k = dd[u]
                if k >= 2:
                    colscore[jj] -= gg[u]
                dd[u] = k - 1
        lead = _order_lead(prob, prob.lead(c, cols))
        hybrid_py(prob, group, [x for x in cols if x not in lead], rdepth, cdepth + 1, prefix + tuple(lead), out)
        rdepth += 1
        limited = len(rows) < prob.min_rows or rdepth >= prob.row_stop


def _rows_holding(sorters: dict, local: np.ndarray, j: int, v: int, alive: np.ndarray) -> np.ndarray:
    """Positions (ascending: row order is kept) of the alive rows whose column ``j`` holds value ``v``; the
    column's sort is built once per node (``sorters``) and reused by every pick from it."""
    if j not in sorters:
        k0 = np.bincount(local[:, j])
        sorters[j] = (np.argsort(local[:, j], kind="stable"), np.concatenate([[0], np.cumsum(k0)[:-1]]), k0)
    srt, start, k0 = sorters[j]
    cand = srt[start[v]:start[v] + k0[v]]
    return cand[alive[cand]]


def hybrid_node(prob: Problem, rows: np.ndarray, cols: list[int], rdepth: int, cdepth: int,
                prefix: tuple, out: list) -> None:
    if len(rows) <= SMALL or not cols:
        return hybrid_py(prob, rows.tolist(), cols, rdepth, cdepth, prefix, out)
    enc = prob.enc
    local = enc.codes[rows][:, cols]
    cnts = [np.bincount(local[:, j], minlength=len(enc.values[c])) for j, c in enumerate(cols)]
    if len(rows) < prob.min_rows or rdepth >= prob.row_stop or cdepth >= prob.col_stop:
        return _fallback(prob, rows, cols, cnts, prefix, out)
    gl2 = [prob.group_len2(c, cols) for c in cols]
    contrib = [g * np.maximum(k - 1, 0) for g, k in zip(gl2, cnts)]     # per value: its hits if grouped
    colscore = np.array([int(x.sum()) for x in contrib], dtype=np.int64)
    sorters: dict = {}
    alive = np.ones(len(rows), dtype=bool)
    n_alive = len(rows)
    threshold = max(1, prob.min_score)
    while True:
        if n_alive <= SMALL:
            return hybrid_py(prob, rows[alive].tolist(), cols, rdepth, cdepth, prefix, out)
        if rdepth >= prob.row_stop or colscore.max() < threshold:
            return _fallback(prob, rows[alive], cols, cnts, prefix, out)
        j = int(np.argmax(colscore))
        v = int(np.argmax(contrib[j]))
        group = _rows_holding(sorters, local, j, v, alive)
        alive[group] = False
        n_alive -= len(group)
        for jj in range(len(cols)):  # take the group's cells out of the counts and scores
            vals = local[group, jj]
            np.subtract.at(cnts[jj], vals, 1)
            contrib[jj][vals] = gl2[jj][vals] * np.maximum(cnts[jj][vals] - 1, 0)
            colscore[jj] = int(contrib[jj].sum())
        c = cols[j]
        lead = _order_lead(prob, prob.lead(c, cols))
        hybrid_node(prob, rows[group], [x for x in cols if x not in lead], rdepth, cdepth + 1,
                    prefix + tuple(lead), out)
        rdepth += 1


# --- GGR itself, with counts kept up to date ------------------------------------------------------------
# The same choices as ggr.py (same ties, same fallback), so the same plan, without recounting every pick.
# It is the third candidate on small tables, which makes fast never worse than GGR there.

def _ggr_fallback(prob: Problem, rows: np.ndarray, local: np.ndarray, cnts, cols: list[int], out: list) -> None:
    scores = {}
    for j, c in enumerate(cols):
        k = cnts[j]
        present = k > 0
        scores[c] = int((prob.enc.len2[c][present] * (k[present] - 1)).sum())
    order = prob.fallback_columns(scores, cols)
    pos = {c: j for j, c in enumerate(cols)}
    perm = np.lexsort(local[:, [pos[c] for c in order]].T[::-1]) if order else np.arange(len(rows))
    head = tuple(order)
    out.extend((r, head) for r in rows[perm].tolist())


def ggr_node_inc(prob: Problem, rows: np.ndarray, cols: list[int], rdepth: int, cdepth: int, out: list) -> None:
    if len(rows) <= SMALL or not cols:
        return ggr_node(prob, rows.tolist(), cols, rdepth, cdepth, out)
    enc = prob.enc
    local = enc.codes[rows][:, cols]
    cards = [len(enc.values[c]) for c in cols]
    cnts = [np.bincount(local[:, j], minlength=cards[j]) for j in range(len(cols))]
    if rdepth >= prob.row_stop or cdepth >= prob.col_stop:
        return _ggr_fallback(prob, rows, local, cnts, cols, out)
    gl2 = [prob.group_len2(c, cols) for c in cols]
    offs = np.concatenate([[0], np.cumsum(cards)[:-1]]).astype(np.int64)
    score = np.concatenate([g * (k - 1) for g, k in zip(gl2, cnts)])
    sorters: dict = {}
    alive = np.ones(len(rows), dtype=bool)
    n_alive = len(rows)
    threshold = max(1, prob.min_score)
    while True:
        if n_alive <= SMALL:
            return ggr_node(prob, rows[alive].tolist(), cols, rdepth, cdepth, out)
        if rdepth >= prob.row_stop:
            return _ggr_fallback(prob, rows[alive], local[alive], cnts, cols, out)
        i = int(np.argmax(score))  # first maximum: earliest column, then smallest value, as in ggr.py
        if score[i] < threshold:
            return _ggr_fallback(prob, rows[alive], local[alive], cnts, cols, out)
        j = int(np.searchsorted(offs, i, side="right")) - 1
        v = i - int(offs[j])
        group = _rows_holding(sorters, local, j, v, alive)
        alive[group] = False
        n_alive -= len(group)
        for jj in range(len(cols)):
            vals = local[group, jj]
            np.subtract.at(cnts[jj], vals, 1)
            score[offs[jj] + vals] = gl2[jj][vals] * (cnts[jj][vals] - 1)
        lead = prob.lead(cols[j], cols)
        sub: list = []
        ggr_node_inc(prob, rows[group], [x for x in cols if x not in lead], rdepth, cdepth + 1, sub)
        head = tuple(lead)
        out.extend((r, head + f) for r, f in sub)
        rdepth += 1


def _phc(prob: Problem, pairs) -> int:
    """PHC of a candidate plan over the searched columns (the appended ones are the same in every candidate)."""
    n, m = len(pairs), len(prob.cols)
    if n < 2 or m == 0:
        return 0
    F = np.array([f for _, f in pairs], dtype=np.int64).reshape(n, m)
    rows = np.array([r for r, _ in pairs], dtype=np.int64)
    V = prob.enc.codes[rows[:, None], F]
    same = (F[1:] == F[:-1]) & (V[1:] == V[:-1])
    lead = np.cumprod(same, axis=1).astype(bool)
    L2 = np.zeros(V.shape, dtype=np.int64)
    for c in prob.cols:
        mask = F == c
        L2[mask] = prob.enc.len2[c][V[mask]]
    return int(L2[1:][lead].sum())


def _run(prob: Problem, candidate: str, rows: np.ndarray) -> list:
    out: list = []
    cols = list(prob.cols)
    if candidate == "ggr":
        ggr_node_inc(prob, rows, cols, 0, 0, out)
        return out
    if candidate == "split":
        return solve_split(prob, rows, _order_lead)
    if len(rows) <= SMALL:
        hybrid_py(prob, rows.tolist(), cols, 0, 0, (), out)
    else:
        hybrid_node(prob, rows, cols, 0, 0, (), out)
    return out


def solve(prob: Problem) -> list[tuple[int, tuple[int, ...]]]:
    """The best candidate by prefix hit count (ties: split, value, ggr), run on every row up to SAMPLE rows;
    on a larger table split and value are compared on a random SAMPLE/2 rows and the winner runs on every row."""
    n = prob.enc.n_rows
    rows = np.arange(n)
    if n > SAMPLE:  # on a sample "value" must win clearly: it is slower, and a sample is noisy
        sample = np.sort(np.random.default_rng(0).choice(n, SAMPLE // 2, replace=False))
        split, value = (_phc(prob, _run(prob, name, sample)) for name in ("split", "value"))
        return _run(prob, "value" if value > 1.01 * split else "split", rows)
    names = ("split", "value", "ggr") if n <= GGR_ROWS else ("split", "value")
    plans = {name: _run(prob, name, rows) for name in names}
    return max(plans.values(), key=lambda plan: _phc(prob, plan))  # ties: the first, split

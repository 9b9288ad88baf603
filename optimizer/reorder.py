"""``reorder(df) -> ReorderPlan``: the row order and per-row field order that maximise shared prompt prefixes."""
from __future__ import annotations

import time
from dataclasses import dataclass

from . import fast, ggr
from .fd import functional_dependencies
from .metrics import _phc_and_total
from .stats import as_frame, encode

METHODS = ("fast", "ggr", "original")


@dataclass
class ReorderPlan:
    order: list[int]                  # row positions of the input, in submission order
    fields: list[tuple[str, ...]]     # per output row (aligned with order): its prompt's column order
    solve_seconds: float
    method: str
    estimated_hit_rate: float         # cell-level PHC / sum of len(cell)^2
    columns: list[str]

    def __len__(self) -> int:
        return len(self.order)


def reorder(df, *, method: str = "fast", columns=None, fds="auto", row_stop=None, col_stop=None,
            min_score: int = 1, min_rows: int = 2, distinct_threshold: float = 0.7) -> ReorderPlan:
    """Plan the submission order of ``df``'s rows and each row's field order.

    ``columns``: the prompt's columns (default all); ``fds``: "auto" (exact FDs found in the data), None (none)
    or a list of (determinant, dependent) pairs. Limits: ``row_stop`` / ``col_stop`` recursion depths (None:
    unlimited), ``min_score`` the smallest HitCount worth a group, ``min_rows`` the smallest group searched,
    ``distinct_threshold``: columns with more distinct values than this share of rows skip the search and go
    last. Values are compared as strings, NULL as "null".
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    t0 = time.perf_counter()
    frame = as_frame(df)
    if columns is not None:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise KeyError(f"columns not in the table: {missing}")
        frame = frame[list(columns)]
    enc = encode(frame)
    names, n, m = enc.columns, enc.n_rows, len(enc.columns)

    if method == "original" or n == 0 or m == 0:
        order, fields = list(range(n)), [tuple(names)] * n
    else:
        ratio = [len(v) / n for v in enc.values]
        search = [j for j in range(m) if ratio[j] <= distinct_threshold]
        wide = [j for j in range(m) if ratio[j] > distinct_threshold]
        deps, mutual = _fd_maps(enc, names, search, fds)
        prob = ggr.Problem(enc, search, deps, mutual,
                           row_stop=float("inf") if row_stop is None else row_stop,
                           col_stop=float("inf") if col_stop is None else col_stop,
                           min_score=min_score, min_rows=min_rows)
        # the many-valued columns go last, by their expected hit over the whole table
        tail = tuple(prob.fallback_columns({j: _col_score(enc, j) for j in wide}, wide))
        pairs = (fast.solve if method == "fast" else ggr.solve)(prob)
        order = [r for r, _ in pairs]
        memo: dict[tuple, tuple[str, ...]] = {}
        fields = []
        for _, f in pairs:
            named = memo.get(f)
            if named is None:
                named = memo[f] = tuple(names[j] for j in f + tail)
            fields.append(named)
    seconds = time.perf_counter() - t0
    phc, total = _phc_and_total(enc, order, fields)
    return ReorderPlan(order, fields, seconds, method, phc / total if total else 0.0, list(names))


def _col_score(enc, j: int) -> int:
    k = enc.counts[j]
    return int((enc.len2[j] * (k - 1)).sum())


def _fd_maps(enc, names, search, fds):
    if fds is None or fds is False:
        pairs = []
    elif isinstance(fds, str):
        if fds != "auto":
            raise ValueError(f"fds must be 'auto', None or a list of (a, b) pairs, got {fds!r}")
        pairs = functional_dependencies(enc, [names[j] for j in search])
    else:
        pairs = [(str(a), str(b)) for a, b in fds]
    pos = {c: j for j, c in enumerate(names)}
    ok = set(search)
    deps: dict[int, list[int]] = {}
    for a, b in pairs:
        if pos.get(a) in ok and pos.get(b) in ok and a != b:
            deps.setdefault(pos[a], []).append(pos[b])
    deps = {a: sorted(set(ds)) for a, ds in deps.items()}
    mutual = {a: {b for b in ds if a in deps.get(b, ())} for a, ds in deps.items()}
    return deps, mutual

"""Exact functional dependencies between columns (a -> b: equal a implies equal b on every row).

GGR uses them twice: a value's score counts the values it determines, and the determined columns are placed
right after their determinant, so columns that determine each other (an FD group) always stay contiguous.
"""
from __future__ import annotations

import numpy as np

from .stats import Encoded, encode


def _fds_encoded(enc: Encoded, columns: list[str]) -> list[tuple[str, str]]:
    idx = [enc.columns.index(c) for c in columns]
    out = []
    for a in idx:
        ca, na = enc.codes[:, a], len(enc.values[a])
        for b in idx:
            if a == b or len(enc.values[b]) > na:  # a cannot determine a column with more values
                continue
            cb = enc.codes[:, b]
            det = np.empty(na, dtype=np.int64)
            det[ca] = cb  # one b value kept per a value; a -> b iff it is every row's b value
            if np.array_equal(det[ca], cb):
                out.append((enc.columns[a], enc.columns[b]))
    return out


def functional_dependencies(df, columns=None) -> list[tuple[str, str]]:
    """Every exact FD ``(a, b)`` among ``columns`` (default: all) that holds on every row of ``df``."""
    enc = df if isinstance(df, Encoded) else encode(df)
    if enc.n_rows == 0:
        return []
    return _fds_encoded(enc, list(columns) if columns is not None else list(enc.columns))


def fd_groups(df=None, columns=None, fds=None) -> list[tuple[str, ...]]:
    """Columns that determine each other (a -> b and b -> a), as groups of two or more in column order."""
    if fds is None:
        fds = functional_dependencies(df, columns)
    cols = list(columns) if columns is not None else list(dict.fromkeys(c for p in fds for c in p))
    fdset = set(fds)
    groups, seen = [], set()
    for a in cols:
        if a in seen:
            continue
        g = [a] + [b for b in cols if b != a and b not in seen and (a, b) in fdset and (b, a) in fdset]
        seen.update(g)
        if len(g) > 1:
            groups.append(tuple(g))
    return groups

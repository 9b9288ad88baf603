"""Column statistics, and the one encoding every reordering works on.

All values are compared as strings: NULL/NaN becomes ``"null"``. Each column is encoded once as integer codes
whose order is the strings' lexicographic order, so a numeric sort of codes is a string sort of values.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

NULL = "null"


@dataclass(frozen=True)
class ColumnStats:
    distinct: int
    null_count: int
    avg_len: float
    max_len: int
    distinct_ratio: float


def as_frame(df) -> pd.DataFrame:
    """A pandas DataFrame from a DataFrame, a pyarrow Table or a list of dicts (columns kept in order)."""
    if isinstance(df, pd.DataFrame):
        return df
    if hasattr(df, "to_pandas"):  # pyarrow.Table / RecordBatch
        return df.to_pandas()
    if isinstance(df, list):
        return pd.DataFrame.from_records(df) if df else pd.DataFrame()
    raise TypeError(f"expected a pandas DataFrame, a pyarrow Table or a list of dicts, got {type(df).__name__}")


def as_strings(col: pd.Series) -> np.ndarray:
    """The column's values as Python strings, NULL/NaN as "null"."""
    if pd.api.types.infer_dtype(col, skipna=False) == "string" and not col.isna().any():  # all str already
        return col.to_numpy(dtype=object)
    vals = col.to_numpy(dtype=object, na_value=None)
    return np.array([NULL if v is None or (isinstance(v, float) and v != v) else str(v) for v in vals], dtype=object)


@dataclass
class Encoded:
    """A table as integer codes: ``codes[:, j]`` indexes ``values[j]``; ``len2[j][code]`` = len(value)^2."""
    columns: list[str]
    codes: np.ndarray            # (n_rows, n_cols) int64, lexicographic ranks per column
    values: list[np.ndarray]     # distinct strings per column, sorted
    len2: list[np.ndarray]       # squared string length per distinct value
    counts: list[np.ndarray]     # occurrences of each distinct value in the whole table

    @property
    def n_rows(self) -> int:
        return self.codes.shape[0]


def encode(df) -> Encoded:
    df = as_frame(df)
    n = len(df)
    cols = [str(c) for c in df.columns]
    codes = np.zeros((n, len(cols)), dtype=np.int64)
    values, len2, counts = [], [], []
    for j, c in enumerate(df.columns):
        s = as_strings(df[c])
        code, uniq = pd.factorize(s)  # hashing only; the few distinct values are sorted after
        uniq = np.asarray(uniq, dtype=object)
        perm = np.argsort(uniq, kind="stable")
        rank = np.empty(len(uniq), dtype=np.int64)
        rank[perm] = np.arange(len(uniq))
        codes[:, j] = rank[code]
        uniq = uniq[perm]
        values.append(uniq)
        len2.append(np.array([len(u) ** 2 for u in uniq], dtype=np.int64))
        counts.append(np.bincount(codes[:, j], minlength=len(uniq)).astype(np.int64))
    return Encoded(cols, codes, values, len2, counts)


def column_stats(df) -> dict[str, ColumnStats]:
    df = as_frame(df)
    n = len(df)
    out = {}
    for c in df.columns:
        s = as_strings(df[c])
        lens = np.fromiter((len(v) for v in s), dtype=np.int64, count=n)
        distinct = len(set(s.tolist()))
        out[str(c)] = ColumnStats(distinct=distinct, null_count=int(df[c].isna().sum()),
                                  avg_len=float(lens.mean()) if n else 0.0, max_len=int(lens.max()) if n else 0,
                                  distinct_ratio=distinct / n if n else 0.0)
    return out

"""A trace as columns (numpy arrays): what the fast simulator replays and the generator writes.

One row per operation, in time order: ``time`` (seconds), ``op`` (``OP_WRITE``, ``OP_READ``, ``OP_DELETE``,
``OP_HEAD``), ``region`` (index into ``regions``), ``key`` (dense ids ``0 .. n_keys - 1``) and ``size`` (bytes of
the object, for reads too). ``Event`` lists convert both ways; CSV files (the generic ``time,op,region,key,size``
form) are read with pandas' C parser and written in blocks, so traces of millions of rows stay quick.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

OP_WRITE, OP_READ, OP_DELETE, OP_HEAD = 0, 1, 2, 3
OP_NAMES = ("write", "read", "delete", "head")
OP_CODES = {name: code for code, name in enumerate(OP_NAMES)}


@dataclass
class TraceArrays:
    time: np.ndarray     # float64, non-decreasing
    op: np.ndarray       # int8
    region: np.ndarray   # int16, index into regions
    key: np.ndarray      # int64, dense ids
    size: np.ndarray     # int64 bytes
    regions: list[str]
    n_keys: int

    def __len__(self) -> int:
        return len(self.time)

    def rows(self, start: int, stop: int) -> "TraceArrays":
        """Rows ``start:stop`` (views, no copy)."""
        return TraceArrays(self.time[start:stop], self.op[start:stop], self.region[start:stop],
                           self.key[start:stop], self.size[start:stop], self.regions, self.n_keys)

    def counts(self) -> dict:
        by_op = np.bincount(self.op, minlength=len(OP_NAMES))
        return {"events": len(self), **{f"{name}s": int(by_op[code]) for code, name in enumerate(OP_NAMES)},
                "objects": int(len(np.unique(self.key))),
                "span_seconds": float(self.time[-1] - self.time[0]) if len(self) else 0.0}

    @classmethod
    def from_events(cls, events: Sequence, regions: Sequence[str] | None = None) -> "TraceArrays":
        """From ``simulator.Event`` rows (every region set); keys get ids in order of first appearance."""
        regions = list(regions) if regions is not None else sorted({e.region for e in events})
        region_index = {r: i for i, r in enumerate(regions)}
        key_index: dict[str, int] = {}
        n = len(events)
        time, op = np.empty(n), np.empty(n, np.int8)
        region, key, size = np.empty(n, np.int16), np.empty(n, np.int64), np.empty(n, np.int64)
        for i, e in enumerate(events):
            time[i], op[i], size[i] = e.time, OP_CODES[e.op], e.size
            try:
                region[i] = region_index[e.region]
            except KeyError:
                raise ValueError(f"event {i} in region {e.region!r}, not one of {regions}") from None
            key[i] = key_index.setdefault(e.key, len(key_index))
        return cls(time, op, region, key, size, regions, len(key_index))

    def to_events(self) -> list:
        from .simulator import Event  # the event form lives with the event-by-event simulator

        return [Event(float(t), OP_NAMES[o], self.regions[r], f"k{k}", int(s))
                for t, o, r, k, s in zip(self.time, self.op, self.region, self.key, self.size)]


def stable_order(key: np.ndarray) -> np.ndarray:
    """``np.argsort(key, kind="stable")`` for non-negative integers, several times faster: sort the distinct
    numbers key * n + position and read the positions back."""
    n = len(key)
    return np.sort(key.astype(np.int64) * n + np.arange(n)) % n


def write_csv(trace: TraceArrays, path: str | Path, block: int = 1_000_000) -> None:
    """The generic CSV form (``time,op,region,key,size``; keys ``k<id>``), written in blocks."""
    names = np.array(OP_NAMES)
    regions = np.array(trace.regions)
    with open(path, "w") as f:
        f.write("time,op,region,key,size\n")
        for start in range(0, len(trace), block):
            part = trace.rows(start, start + block)
            lines = np.char.add(np.char.add(np.char.mod("%.6f,", part.time), names[part.op]), ",")
            lines = np.char.add(np.char.add(lines, regions[part.region]), ",k")
            lines = np.char.add(np.char.add(np.char.add(lines, part.key.astype(str)), ","), part.size.astype(str))
            f.write("\n".join(lines.tolist()))
            f.write("\n")


def read_csv(path: str | Path, columns: Sequence[str] = ("time", "op", "region", "key", "size"),
             regions: Sequence[str] | None = None) -> TraceArrays:
    """A CSV trace with a header naming ``columns`` (time in seconds or an ISO timestamp) as columns, time-ordered
    (stable) and starting at 0. Ops: write/put, read/get, delete, head."""
    import pandas as pd

    from .region_names import cloud_identity

    frame = pd.read_csv(path, usecols=list(columns), dtype={columns[1]: str, columns[2]: str, columns[3]: str})
    frame.columns = ["time", "op", "region", "key", "size"]
    time = pd.to_numeric(frame["time"], errors="coerce")
    if time.isna().any():  # timestamps
        time = pd.to_datetime(frame["time"], utc=True).astype("int64") / 1e9
    ops = frame["op"].str.strip().str.lower().replace({"get": "read", "put": "write"})
    bad = ~ops.isin(OP_NAMES)
    if bad.any():
        raise ValueError(f"{path}: unknown op {frame['op'][bad].iloc[0]!r} (expected one of {', '.join(OP_NAMES)})")
    names = [cloud_identity(r) for r in frame["region"].str.strip().unique()]
    regions = [cloud_identity(r) for r in regions] if regions is not None else sorted(set(names))
    codes = {r: i for i, r in enumerate(regions)}
    region_of = {raw: codes.get(cloud_identity(raw.strip()), -1) for raw in frame["region"].unique()}
    region = frame["region"].map(region_of).to_numpy(np.int16)
    if (region < 0).any():
        raise ValueError(f"{path}: regions {sorted(set(names) - set(regions))} are not in {regions}")
    key, uniques = pd.factorize(frame["key"].str.strip())
    order = np.argsort(time.to_numpy(), kind="stable")
    t = time.to_numpy(float)[order]
    return TraceArrays(t - (t[0] if len(t) else 0.0), ops.map(OP_CODES).to_numpy(np.int8)[order], region[order],
                       key.astype(np.int64)[order], frame["size"].to_numpy(np.int64)[order], regions, len(uniques))

"""Replay object-store traces against a placement policy and prices; storage, egress and request costs.

Semantics (the store's):

* The first write of a key puts the base copy in the writer's region (plus whatever else the policy's
  ``initial_regions`` asks for, copied from the writer: egress, a GET at the writer, a PUT at each copy). The
  base copy is never evicted; it is charged storage for as long as the object exists.
* A read in a region holding a live copy is a hit (one GET there). A hit on a non-base copy extends its expiry
  to ``now + ttl`` (never shortens it); ``ttl`` is asked with the cheapest *other* live copy as source.
* Any other read is served from the cheapest live copy (egress source -> reader, one GET at the source) and,
  when the policy's ``ttl > 0``, leaves a copy expiring at ``now + ttl`` (one PUT in the reader's region).
* A later write replaces every copy (new base in the writer's region); a delete removes every copy. Deletes are
  free (S3 and GCS do not bill DELETE).
* Storage is charged for the time each copy is held: until its expiry, the object's replacement or deletion, or
  the end of the trace (its last event), whichever comes first.
* Reads of keys that do not exist (never written, or deleted) are counted as ``missing_reads`` and cost nothing.
* HEADs are answered from the metadata: counted as ``heads``, free.

This module's replay goes event by event and is the reference; ``fastsim`` replays the same rules vectorised
(``simulate(..., engine="fast")``, the default) with the same costs, about 5-40x faster.

The clairvoyant optimum replays the same trace with a policy that knows the future: after each read it keeps
the copy until the next read of that object version from that region iff that gap is shorter than the copy's
T_even, i.e. each gap costs min(storage * gap, egress).

Traces: the IBM Cloud Object Storage ``.ssv`` format, the multi-region CSV (``timestamp,op,issue_region,
obj_key,size``) and a generic CSV (``time,op,region,key,size``; time in seconds). Single-region traces are spread
over N regions (``spread_events``). Regions are cloud identities; traces and ``--region-list`` may spell them
either way (``aws:us-east-1`` or ``aws-us-east-1``, see ``region_names``). Time starts at 0 at the first event;
``--time-scale X`` multiplies every time by X (the shipped traces span minutes, far shorter than T_even, which is
days to months; scaling stretches the gaps so that TTLs matter).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import random
import sys
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from .policy import POLICY_NAMES, Policy, make_policy
from .pricing import GB, Prices, UnknownRegionError
from .region_names import cloud_identity
from .trace_arrays import TraceArrays
from .trace_arrays import read_csv as read_arrays

OPS = ("write", "read", "delete", "head")
FORMATS = ("ibm", "multiregion", "csv")
SPREADS = ("one", "all", "random")
# Realistic mixes: two AWS regions an ocean apart, then GCP and Azure in the US, Europe and Asia.
# The first three are the 3-region set; ``--regions N`` takes the first N.
REGION_MIX = ("aws:us-east-1", "aws:eu-west-1", "gcp:us-central1",
              "azure:eastus", "gcp:europe-west1", "aws:ap-northeast-1")
BUCKET = "trace"
EXPIRY_SLACK_S = 1e-6  # float rounding in now + ttl must not turn a planned hit into a miss
IBM_OPS = {"REST.PUT.OBJECT": "write", "REST.COPY.OBJECT": "write", "REST.GET.OBJECT": "read",
           "REST.DELETE.OBJECT": "delete"}


@dataclass(frozen=True)
class Event:
    time: float    # seconds
    op: str        # write | read | delete
    region: str    # "" in single-region traces until spread
    key: str
    size: int      # bytes (of the object, also for reads)


# ---- costs ------------------------------------------------------------------------------------------------

@dataclass
class CostReport:
    policy: str
    storage: float = 0.0
    egress: float = 0.0
    get_requests: float = 0.0
    put_requests: float = 0.0
    reads: int = 0
    hits: int = 0
    remote_reads: int = 0
    replicas_created: int = 0
    egress_gb: float = 0.0
    writes: int = 0
    deletes: int = 0
    missing_reads: int = 0
    heads: int = 0

    @property
    def requests(self) -> float:
        return self.get_requests + self.put_requests

    @property
    def total(self) -> float:
        return self.storage + self.egress + self.requests

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(requests=self.requests, total=self.total)
        return d


class _Ledger:
    """Charges costs to a report; memoises prices by region name."""

    def __init__(self, report: CostReport, prices: Prices, clouds: Mapping[str, str]):
        self.report, self.prices, self.clouds = report, prices, clouds
        self._memo: dict[tuple, float] = {}

    def _price(self, kind: str, *regions: str) -> float:
        key = (kind, *regions)
        if key not in self._memo:
            ids = [self.clouds.get(r, r) for r in regions]
            self._memo[key] = {"storage": self.prices.storage_gb_second, "egress": self.prices.egress_gb,
                               "get": self.prices.get_request, "put": self.prices.put_request}[kind](*ids)
        return self._memo[key]

    def egress_price(self, src: str, dst: str) -> float:
        return self._price("egress", src, dst)

    def store(self, region: str, size: int, seconds: float) -> None:
        self.report.storage += size / GB * self._price("storage", region) * max(0.0, seconds)

    def move(self, src: str, dst: str, size: int) -> None:
        self.report.egress += size / GB * self.egress_price(src, dst)
        self.report.egress_gb += size / GB if src != dst else 0.0

    def get(self, region: str) -> None:
        self.report.get_requests += self._price("get", region)

    def put(self, region: str) -> None:
        self.report.put_requests += self._price("put", region)


@dataclass
class _Copy:
    start: float
    expiry: float  # inf for the base copy


@dataclass
class _Object:
    size: int
    base: str
    copies: dict[str, _Copy] = field(default_factory=dict)


# ---- replay -------------------------------------------------------------------------------------------------

class _Replay:
    def __init__(self, policy: Policy, prices: Prices, clouds: Mapping[str, str], regions: Sequence[str]):
        self.policy, self.regions = policy, list(regions)
        self.report = CostReport(policy.name)
        self.ledger = _Ledger(self.report, prices, clouds)
        self.objects: dict[str, _Object] = {}

    def run(self, events: Sequence[Event]) -> CostReport:
        for ev in events:
            getattr(self, f"_{ev.op}")(ev)
        end = events[-1].time if events else 0.0
        for obj in self.objects.values():
            self._retire_all(obj, end)
        return self.report

    def _retire(self, obj: _Object, region: str, now: float) -> None:
        copy = obj.copies.pop(region)
        self.ledger.store(region, obj.size, min(copy.expiry, now) - copy.start)

    def _retire_all(self, obj: _Object, now: float) -> None:
        for region in list(obj.copies):
            self._retire(obj, region, now)

    def _drop_expired(self, obj: _Object, now: float) -> None:
        for region, copy in list(obj.copies.items()):
            if copy.expiry + EXPIRY_SLACK_S < now:
                self._retire(obj, region, now)

    def _cheapest_source(self, obj: _Object, dst: str) -> str:
        others = [r for r in obj.copies if r != dst]
        # the base first so that ties go to it, then by name for a deterministic choice
        others.sort(key=lambda r: (self.ledger.egress_price(r, dst), r != obj.base, r))
        return others[0]

    def _write(self, ev: Event) -> None:
        self.report.writes += 1
        old = self.objects.pop(ev.key, None)
        if old is not None:
            self._retire_all(old, ev.time)
        obj = self.objects[ev.key] = _Object(ev.size, ev.region)
        targets = self.policy.initial_regions(ev.region, self.regions)
        obj.copies[ev.region] = _Copy(ev.time, math.inf)
        self.ledger.put(ev.region)
        for region in targets[1:]:
            if region in obj.copies:
                continue
            self.ledger.move(ev.region, region, ev.size)
            self.ledger.get(ev.region)
            self.ledger.put(region)
            self.report.replicas_created += 1
            obj.copies[region] = _Copy(ev.time, ev.time + self.policy.ttl(region, ev.region, ev.time))

    def _delete(self, ev: Event) -> None:
        self.report.deletes += 1
        obj = self.objects.pop(ev.key, None)
        if obj is not None:
            self._retire_all(obj, ev.time)

    def _head(self, ev: Event) -> None:
        self.report.heads += 1  # answered from the metadata: no cloud request

    def _read(self, ev: Event) -> None:
        obj = self.objects.get(ev.key)
        if obj is None:
            self.report.missing_reads += 1
            return
        self.report.reads += 1
        now, region = ev.time, ev.region
        self.policy.record_read(region, BUCKET, ev.key, now, size=obj.size, base=obj.base)
        self._drop_expired(obj, now)
        copy = obj.copies.get(region)
        if copy is not None:
            self.report.hits += 1
            self.ledger.get(region)
            if region != obj.base:
                ttl = self.policy.ttl(region, self._cheapest_source(obj, region), now, BUCKET, ev.key)
                copy.expiry = max(copy.expiry, now + ttl)
            return
        source = self._cheapest_source(obj, region)
        self.report.remote_reads += 1
        self.ledger.move(source, region, obj.size)
        self.ledger.get(source)
        ttl = self.policy.ttl(region, source, now, BUCKET, ev.key)
        if ttl > 0:
            obj.copies[region] = _Copy(now, now + ttl)
            self.ledger.put(region)
            self.report.replicas_created += 1


def replay(events: Sequence[Event], policy: Policy, prices: Prices, clouds: Mapping[str, str] | None = None,
           regions: Sequence[str] | None = None) -> CostReport:
    """Cost of ``events`` (time-ordered, every region set) under ``policy``. ``clouds`` maps region names to
    cloud identities (identity by default); ``regions`` is the region set offered to ``initial_regions``
    (default: the regions in the trace)."""
    regions = list(regions) if regions is not None else sorted({e.region for e in events})
    clouds = dict(clouds) if clouds is not None else {r: r for r in regions}
    unset = [e for e in events if not e.region]
    if unset:
        raise ValueError("trace events without a region: spread a single-region trace first (spread_events)")
    return _Replay(policy, prices, clouds, regions).run(events)


class ClairvoyantPolicy(Policy):
    """The offline optimum the issue defines: knows each read's next re-read gap (same key, same region, same
    version) and keeps the copy exactly that long iff the gap is shorter than T_even(source, region).
    Built for one trace, consumed by one replay of it (``record_read`` is always followed by ``ttl``)."""

    name = "optimum"
    needs_next_gap = True  # the fast replay hands it each read's next gap

    def __init__(self, events: Sequence[Event] | None, prices: Prices, clouds: Mapping[str, str] | None = None):
        self.prices = prices
        self.clouds = dict(clouds or {})
        self._gaps = _next_read_gaps(events) if events is not None else {}
        self._current = math.inf

    def record_read(self, region: str, bucket: str, key: str, now: float, size: int | None = None,
                    base: str | None = None) -> None:
        queue = self._gaps.get((region, key))
        self._current = queue.popleft() if queue else math.inf

    def ttl(self, region: str, source: str, now: float, bucket: str | None = None, key: str | None = None) -> float:
        gap = self._current
        t_even = self.prices.t_even(self.clouds.get(source, source), self.clouds.get(region, region))
        return gap if gap < t_even else 0.0

    def batch_ttls(self, batch) -> np.ndarray:
        ids = [self.clouds.get(r, r) for r in batch.regions]
        t_even = np.array([[self.prices.t_even(s, d) for s in ids] for d in ids])  # [reader, source]
        gap = batch.next_gap[:, None]
        return np.where(gap < t_even[batch.region], gap, 0.0)


def _next_read_gaps(events: Sequence[Event]) -> dict[tuple[str, str], deque]:
    """For each (region, key), in read order, the time to the next read of the same version there (inf if none).
    Reads of keys that do not exist are skipped, as the replay skips them."""
    gaps: dict[tuple[str, str], deque] = {}
    open_reads: dict[str, dict[str, tuple[list, float]]] = {}  # key -> region -> (slot, time of last read)
    alive: set[str] = set()
    for ev in events:
        if ev.op in ("write", "delete"):
            open_reads.pop(ev.key, None)  # a new version: earlier reads have no next read of their version
            (alive.add if ev.op == "write" else alive.discard)(ev.key)
            continue
        if ev.op != "read" or ev.key not in alive:  # HEADs are answered from the metadata
            continue
        slot = [math.inf]
        gaps.setdefault((ev.region, ev.key), deque()).append(slot)
        per_key = open_reads.setdefault(ev.key, {})
        if ev.region in per_key:
            previous_slot, previous_time = per_key[ev.region]
            previous_slot[0] = ev.time - previous_time
        per_key[ev.region] = (slot, ev.time)
    return {k: deque(s[0] for s in q) for k, q in gaps.items()}


def clairvoyant(events: Sequence[Event], prices: Prices, clouds: Mapping[str, str] | None = None,
                regions: Sequence[str] | None = None) -> CostReport:
    regions = list(regions) if regions is not None else sorted({e.region for e in events})
    clouds = dict(clouds) if clouds is not None else {r: r for r in regions}
    return replay(events, ClairvoyantPolicy(events, prices, clouds), prices, clouds, regions)


# ---- trace readers ------------------------------------------------------------------------------------------

def read_ibm_trace(path: str | Path) -> list[Event]:
    """IBM COS trace lines ``time_ms op object_id size [range_start range_end]``. PUT and COPY are writes, GET a
    read of the whole object size (ranged reads too), DELETE a delete; HEAD and other ops are ignored. An object
    first seen by a GET gets an implicit write just before it (it existed before the trace began)."""
    events: list[Event] = []
    seen: set[str] = set()
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 4:
                raise ValueError(f"{path}:{n}: expected 'time_ms op object_id size ...', got {line.strip()!r}")
            op = IBM_OPS.get(parts[1])
            if op is None:
                continue
            time, key, size = int(parts[0]) / 1000.0, parts[2], int(parts[3])
            if op == "read" and key not in seen:
                events.append(Event(time, "write", "", key, size))
            seen.add(key)
            events.append(Event(time, op, "", key, size))
    return events


def _parse_timestamp(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        stamp = datetime.fromisoformat(text.strip())
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=timezone.utc)
        return stamp.timestamp()


def _normalise_op(text: str, where: str) -> str:
    op = text.strip().lower()
    op = {"get": "read", "put": "write"}.get(op, op)
    if op not in OPS:
        raise ValueError(f"{where}: unknown op {text!r} (expected one of {', '.join(OPS)})")
    return op


def _read_csv_rows(path: str | Path, columns: Sequence[str]) -> list[Event]:
    """Rows with (time, op, region, key, size) under the given column names; a header row is required when its
    names differ from the generic ones, optional otherwise."""
    events = []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if rows and rows[0] and not _looks_numeric(rows[0][0]):  # a header row
        header = [c.strip() for c in rows[0]]
        missing = [c for c in columns if c not in header]
        if missing:
            raise ValueError(f"{path}: missing columns {missing} (header: {header})")
        index = [header.index(c) for c in columns]
        body = enumerate(rows[1:], 2)
    else:
        index = list(range(len(columns)))
        body = enumerate(rows, 1)
    for n, row in body:
        if not row or not any(c.strip() for c in row):
            continue
        try:
            t, op, region, key, size = (row[i] for i in index)
            events.append(Event(_parse_timestamp(t), _normalise_op(op, f"{path}:{n}"), cloud_identity(region),
                                key.strip(), int(float(size))))
        except (IndexError, ValueError) as e:
            raise ValueError(f"{path}:{n}: bad row {row}: {e}") from None
    return events


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_multiregion_trace(path: str | Path) -> list[Event]:
    return _read_csv_rows(path, ("timestamp", "op", "issue_region", "obj_key", "size"))


def read_csv_trace(path: str | Path) -> list[Event]:
    return _read_csv_rows(path, ("time", "op", "region", "key", "size"))


READERS = {"ibm": read_ibm_trace, "multiregion": read_multiregion_trace, "csv": read_csv_trace}


def guess_format(path: str | Path) -> str:
    path = Path(path)
    if path.suffix == ".ssv":
        return "ibm"
    with open(path) as f:
        first = f.readline()
    return "multiregion" if "issue_region" in first else "csv"


def read_trace(path: str | Path, fmt: str | None = None) -> list[Event]:
    fmt = fmt or guess_format(path)
    if fmt not in READERS:
        raise ValueError(f"unknown trace format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return READERS[fmt](path)


# ---- trace transforms ---------------------------------------------------------------------------------------

def prepare(events: Iterable[Event], time_scale: float = 1.0) -> list[Event]:
    """Time-ordered (stable), starting at 0, every time multiplied by ``time_scale``."""
    if not time_scale > 0:
        raise ValueError(f"--time-scale must be > 0, got {time_scale}")
    ordered = sorted(events, key=lambda e: e.time)
    t0 = ordered[0].time if ordered else 0.0
    return [replace(e, time=(e.time - t0) * time_scale) for e in ordered]


def spread_events(events: Sequence[Event], regions: Sequence[str], mode: str = "one", seed: int = 0) -> list[Event]:
    """A single-region trace over ``regions``: each key is written (and deleted) in one home region chosen at
    random; its reads come from one fixed other region (``one``), cycle through all regions starting after the
    home (``all``), or from a random region each (``random``). Seeded, so runs repeat."""
    if mode not in SPREADS:
        raise ValueError(f"unknown spread {mode!r}; choose one of: {', '.join(SPREADS)}")
    if not regions:
        raise ValueError("no regions to spread over")
    rng = random.Random(seed)
    homes: dict[str, int] = {}
    readers: dict[str, int] = {}
    turns: dict[str, int] = {}
    n = len(regions)
    out = []
    for ev in events:
        home = homes.setdefault(ev.key, rng.randrange(n))
        if ev.op != "read":
            out.append(replace(ev, region=regions[home]))
            continue
        if mode == "one":
            other = readers.setdefault(ev.key, (home + 1 + rng.randrange(n - 1)) % n if n > 1 else home)
            index = other
        elif mode == "all":
            turns[ev.key] = turns.get(ev.key, 0) + 1
            index = (home + turns[ev.key]) % n
        else:
            index = rng.randrange(n)
        out.append(replace(ev, region=regions[index]))
    return out


def map_regions(events: Sequence[Event], regions: Sequence[str]) -> list[Event]:
    """A multi-region trace onto a smaller region set: the trace's regions, in order of first appearance, are
    assigned round-robin to ``regions``."""
    assigned: dict[str, str] = {}
    for ev in events:
        if ev.region not in assigned:
            assigned[ev.region] = regions[len(assigned) % len(regions)]
    return [replace(ev, region=assigned[ev.region]) for ev in events]


def region_set(n: int) -> list[str]:
    if not 1 <= n <= len(REGION_MIX):
        raise ValueError(f"--regions must be between 1 and {len(REGION_MIX)} (the built-in mix: "
                         f"{', '.join(REGION_MIX)}); use --region-list for others")
    return list(REGION_MIX[:n])


# ---- a whole simulation ------------------------------------------------------------------------------------

ENGINES = ("fast", "events")


def simulate(events, policies: Sequence[str], prices: Prices, regions: Sequence[str] | None = None,
             engine: str = "fast") -> dict:
    """Cost of each policy spec and the clairvoyant optimum over a prepared trace (``Event`` list or
    ``TraceArrays``, every region set). ``engine``: ``fast`` (vectorised, ``fastsim``) or ``events`` (this
    module's event-by-event replay, the reference); both give the same costs."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    arrays = isinstance(events, TraceArrays)
    if regions is None:
        regions = events.regions if arrays else sorted({e.region for e in events})
    regions = list(regions)
    clouds = {r: r for r in regions}
    for r in regions:
        prices.resolve(r)  # unknown regions fail before any replay
    if engine == "fast":
        from .fastsim import replay_fast

        trace = events if arrays else TraceArrays.from_events(events, regions)
        if trace.regions != regions:
            raise ValueError(f"the trace's regions {trace.regions} differ from {regions}")

        def run(policy):
            return replay_fast(trace, policy, prices, clouds, regions)

        optimum_policy = ClairvoyantPolicy(None, prices, clouds)
    else:
        if arrays:
            events = events.to_events()

        def run(policy):
            return replay(events, policy, prices, clouds, regions)

        optimum_policy = ClairvoyantPolicy(events, prices, clouds)
    results = {spec: run(make_policy(spec, prices, clouds)).as_dict() for spec in policies}
    optimum = run(optimum_policy).as_dict()
    best = optimum["total"]
    ratios = {spec: (r["total"] / best if best > 0 else None) for spec, r in results.items()}
    return {"policies": results, "optimum": optimum, "ratio_to_optimum": ratios}


def trace_summary(events) -> dict:
    if isinstance(events, TraceArrays):
        return events.counts()
    return {"events": len(events), "reads": sum(e.op == "read" for e in events),
            "writes": sum(e.op == "write" for e in events), "deletes": sum(e.op == "delete" for e in events),
            "heads": sum(e.op == "head" for e in events), "objects": len({e.key for e in events}),
            "span_seconds": (events[-1].time - events[0].time) if events else 0.0}


def load_trace(path: str | Path, fmt: str | None, regions: Sequence[str] | None, spread: str | None,
               seed: int, time_scale: float) -> tuple[TraceArrays, list[str]]:
    """As ``load_events``, as columns. A multi-region CSV (generic or multiregion) that needs no spreading is
    read straight into columns (pandas' parser: millions of rows in seconds)."""
    fmt = fmt or guess_format(path)
    if fmt in ("csv", "multiregion") and not spread:
        columns = ("time", "op", "region", "key", "size") if fmt == "csv" else \
            ("timestamp", "op", "issue_region", "obj_key", "size")
        trace = read_arrays(path, columns)
        if not time_scale > 0:
            raise ValueError(f"--time-scale must be > 0, got {time_scale}")
        trace.time = trace.time * time_scale
        if regions:
            regions = [cloud_identity(r) for r in regions]
            order = np.unique(trace.region, return_index=True)[1]
            first_seen = trace.region[np.sort(order)]  # the trace's regions in order of first appearance
            target = np.zeros(len(trace.regions), np.int16)
            target[first_seen] = np.arange(len(first_seen)) % len(regions)
            trace = TraceArrays(trace.time, trace.op, target[trace.region], trace.key, trace.size, list(regions),
                                trace.n_keys)
        return trace, list(trace.regions)
    events, regions = load_events(path, fmt, regions, spread, seed, time_scale)
    return TraceArrays.from_events(events, regions), regions


def load_events(path: str | Path, fmt: str | None, regions: Sequence[str] | None, spread: str | None,
                seed: int, time_scale: float) -> tuple[list[Event], list[str]]:
    """Read, order and scale a trace and place it on ``regions``: single-region traces (and any trace when
    ``spread`` is given) are spread; multi-region traces are mapped onto ``regions`` when given."""
    events = prepare(read_trace(path, fmt), time_scale)
    regions = [cloud_identity(r) for r in regions] if regions else regions  # aws-us-east-1 is aws:us-east-1
    single_region = any(not e.region for e in events)
    if single_region or spread:
        regions = list(regions or REGION_MIX[:3])
        events = spread_events(events, regions, spread or "one", seed)
    elif regions:
        events = map_regions(events, regions)
    else:
        regions = sorted({e.region for e in events})
    return events, list(regions)


def format_report(result: dict) -> str:
    rows = [(name, r) for name, r in result["policies"].items()] + [("optimum", result["optimum"])]
    headers = ["policy", "storage $", "egress $", "requests $", "total $", "x optimum", "hits", "remote"]
    best = result["optimum"]["total"]
    table = [headers] + [[name, f"{r['storage']:.6g}", f"{r['egress']:.6g}", f"{r['requests']:.6g}",
                          f"{r['total']:.6g}", f"{r['total'] / best:.3f}" if best > 0 else "-",
                          str(r["hits"]), str(r["remote_reads"])] for name, r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="skystore simulate",
                                 description="Replay a trace against placement policies; print the cost breakdown "
                                             "as JSON (stdout) and a table (stderr).")
    ap.add_argument("--trace", required=True, help="trace file")
    ap.add_argument("--format", choices=FORMATS, help="trace format (default: from the file: .ssv = ibm, a header "
                                                      "with issue_region = multiregion, else csv)")
    ap.add_argument("--policy", action="append", dest="policies",
                    help=f"policy spec, repeatable: {', '.join(POLICY_NAMES)} (default: learned)")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--regions", type=int, help=f"use the first N of the built-in mix {', '.join(REGION_MIX)}")
    where.add_argument("--region-list", help="comma-separated regions in either spelling, e.g. "
                                             "aws:us-east-1,gcp:us-central1 or aws-us-east-1,gcp-us-central1")
    ap.add_argument("--spread", choices=SPREADS, help="how reads of a single-region trace are placed (default: one)")
    ap.add_argument("--prices", help="folder with egress_cost.csv and storage_pricing.csv (default: built-in list "
                                     "prices)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-scale", type=float, default=1.0, help="multiply every trace time by X (default 1)")
    ap.add_argument("--engine", choices=ENGINES, default="fast",
                    help="fast: vectorised replay (default); events: the event-by-event reference (same costs)")
    return ap


def run(args: argparse.Namespace) -> dict:
    if not Path(args.trace).is_file():
        raise FileNotFoundError(f"trace file not found: {args.trace}")
    prices = Prices.load(args.prices) if args.prices else Prices.default()
    policies = args.policies or ["learned"]
    for spec in policies:  # fail on a bad spec before reading anything
        make_policy(spec, prices, {})
    regions = None
    if args.region_list:
        regions = [r.strip() for r in args.region_list.split(",") if r.strip()]
    elif args.regions is not None:
        regions = region_set(args.regions)
    events, regions = load_trace(args.trace, args.format, regions, args.spread, args.seed, args.time_scale)
    result = simulate(events, policies, prices, regions, engine=getattr(args, "engine", "fast"))
    return {"trace": str(args.trace), "format": args.format or guess_format(args.trace), "regions": regions,
            "spread": args.spread, "seed": args.seed, "time_scale": args.time_scale, "prices": prices.source,
            **trace_summary(events), **result}


def main(argv: list[str] | None = None) -> int:
    """``skystore simulate ...``; returns the exit status (2 for bad arguments or input)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse exits on --help and on bad arguments
        return int(e.code or 0)
    try:
        result = run(args)
    except (OSError, ValueError, UnknownRegionError) as e:
        print(f"skystore simulate: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=_json_default))
    print(format_report(result), file=sys.stderr)
    return 0


def _json_default(value):
    return str(value)


if __name__ == "__main__":
    sys.exit(main())

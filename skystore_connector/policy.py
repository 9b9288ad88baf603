"""Placement policies: where a write puts copies and how long a replicated (non-base) copy is kept.

SkyStore (arXiv 2502.20818) writes to the client's region (the base copy, never evicted), replicates on read and
keeps a replica for a TTL. Keeping a copy at ``dst`` for t seconds costs storage(dst) * t; dropping it and
fetching again costs egress(src, dst). The break-even time T_even = egress / storage per second is the longest
a copy is worth keeping without knowing the future; the learned policy picks a shorter TTL when the observed
re-read gaps say that pays.

Policies (``make_policy`` specs):

=================  ==================================================================================
``learned``        per-region histogram of re-read gaps; the TTL minimising storage + re-fetch cost over
                   that history, at most T_even; T_even until ``MIN_HISTORY`` reads were observed
``t_even``         TTL = T_even(source, region)
``fixed:SECONDS``  TTL = SECONDS
``always-store``   TTL = inf: a replica, once made, stays
``always-evict``   TTL = 0: no replicas, reads from other regions are served remotely
``replicate-all``  every write is copied to every region; copies stay (like a multi-region bucket)
=================  ==================================================================================

The store calls these objects from request threads, so every method is thread-safe. Pure computation, no I/O.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Mapping, Sequence

import numpy as np

from .pricing import GB, Prices

DEFAULT_POLICY = "learned"
POLICY_NAMES = ("learned", "t_even", "fixed:SECONDS", "always-store", "always-evict", "replicate-all")

# The learned TTL trusts a region's history once it holds this many observations (closed re-read gaps plus
# reads that went unanswered past the horizon); before that it behaves like ``t_even``. 30 is the usual
# small-sample rule of thumb: enough that one odd gap cannot move the TTL far.
MIN_HISTORY = 30
# Histogram bins: log-spaced upper edges from 10 ms to the region's horizon, 10 bins per decade.
SMALLEST_GAP_S = 0.01
BINS_PER_DECADE = 10
# Per-region bound on remembered "last read" times (memory of a long-running gateway); the oldest are forgotten.
MAX_TRACKED_KEYS = 1_000_000
# Open (not yet re-read) reads are re-binned by age after this fraction (1/N) of them has been read again.
OPEN_READS_REFRESH = 16
# Histogram horizon when no other configured region gives a finite T_even (one region, or free storage).
DEFAULT_HORIZON_S = 365 * 86400.0


class Policy:
    """Base class: one base copy where the client wrote, no replicas (subclasses override ``ttl``)."""

    name = "policy"

    def initial_regions(self, write_region: str, regions: Sequence[str]) -> list[str]:
        """Where a completed write puts copies; the first is the base copy (never evicted)."""
        return [write_region]

    def ttl(self, region: str, source: str, now: float) -> float:
        """Seconds to keep (or extend) a non-base copy in ``region`` whose cheapest re-fetch source is
        ``source``; 0 = do not keep it, ``math.inf`` = keep it forever."""
        return 0.0

    def record_read(self, region: str, bucket: str, key: str, now: float, size: int | None = None) -> None:
        """Every read served in ``region`` (only the learned policy uses these). ``size`` (bytes, optional) lets
        the learned TTL weigh each gap by the bytes it would store or move."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class FixedTTLPolicy(Policy):
    def __init__(self, seconds: float, name: str | None = None):
        if not seconds >= 0:  # also rejects NaN
            raise ValueError(f"TTL must be >= 0 seconds, got {seconds}")
        self.seconds = float(seconds)
        self.name = name or f"fixed:{seconds:g}"

    def ttl(self, region: str, source: str, now: float) -> float:
        return self.seconds


class ReplicateAllPolicy(Policy):
    name = "replicate-all"

    def initial_regions(self, write_region: str, regions: Sequence[str]) -> list[str]:
        return [write_region] + [r for r in regions if r != write_region]

    def ttl(self, region: str, source: str, now: float) -> float:
        return math.inf


class _CloudPrices:
    """T_even between region *names*, through the region -> cloud identity map (memoised, thread-safe)."""

    def __init__(self, prices: Prices, clouds: Mapping[str, str]):
        self.prices = prices
        self.clouds = dict(clouds)
        self._t_even: dict[tuple[str, str], float] = {}

    def cloud(self, region: str) -> str:
        return self.clouds.get(region, region)

    def t_even(self, source: str, region: str) -> float:
        key = (source, region)
        value = self._t_even.get(key)
        if value is None:  # a racing thread computes the same number; dict assignment is atomic
            value = self._t_even[key] = self.prices.t_even(self.cloud(source), self.cloud(region))
        return value

    def storage_per_second(self, region: str) -> float:
        return self.prices.storage_gb_second(self.cloud(region))

    def egress(self, source: str, region: str) -> float:
        return self.prices.egress_gb(self.cloud(source), self.cloud(region))

    def horizon(self, region: str) -> float:
        """The longest T_even into ``region`` from any configured region: no TTL ever exceeds it."""
        finite = [t for t in (self.t_even(s, region) for s in self.clouds if s != region) if math.isfinite(t)]
        return max(finite, default=DEFAULT_HORIZON_S)


class TEvenPolicy(Policy):
    name = "t_even"

    def __init__(self, prices: Prices, clouds: Mapping[str, str]):
        self._costs = _CloudPrices(prices, clouds)

    def ttl(self, region: str, source: str, now: float) -> float:
        return self._costs.t_even(source, region)


class GapHistogram:
    """Re-read gaps seen in one region, binned on log-spaced upper edges (``edges[-1]`` is the horizon).

    ``weights[k]``/``sums[k]`` hold the total weight (GB) and weighted length of the gaps in (edges[k-1],
    edges[k]]. Gaps longer than the horizon and reads never re-read within it are ``beyond``: for every admissible
    TTL they cost a full TTL of storage (plus one re-fetch if they come back at all, the same for every TTL).
    ``observations`` counts the gaps and beyond reads themselves, unweighted."""

    def __init__(self, horizon: float):
        top = max(horizon, SMALLEST_GAP_S * 10)
        n = max(2, int(math.ceil(math.log10(top / SMALLEST_GAP_S) * BINS_PER_DECADE)) + 1)
        self.edges = np.geomspace(SMALLEST_GAP_S, top, n)
        self.weights = np.zeros(n)
        self.sums = np.zeros(n)
        self.beyond = 0.0
        self.observations = 0

    def add_gap(self, gap: float, weight: float = 1.0) -> None:
        self.observations += 1
        if gap > self.edges[-1]:
            self.beyond += weight
            return
        k = int(np.searchsorted(self.edges, gap, side="left"))  # first edge >= gap
        self.weights[k] += weight
        self.sums[k] += weight * gap

    def add_beyond(self, weight: float = 1.0) -> None:
        self.observations += 1
        self.beyond += weight

    def bin_open_reads(self, ages: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Open reads (not re-read yet) binned by age as if re-read now: (weights, weighted ages, beyond)."""
        k = np.searchsorted(self.edges, ages, side="left")
        inside = k < len(self.edges)
        n = len(self.edges)
        return (np.bincount(k[inside], weights[inside], minlength=n),
                np.bincount(k[inside], weights[inside] * ages[inside], minlength=n), float(weights[~inside].sum()))

    def best_ttl(self, storage_per_s: float, egress: float, limit: float,
                 open_reads: tuple[np.ndarray, np.ndarray, float] | None = None) -> float:
        """The TTL among {0} and the bin edges <= ``limit`` minimising, over the recorded history,
        sum(gap <= ttl: storage * gap; gap > ttl: storage * ttl + egress) (per GB; ``beyond`` pays storage only).
        Candidates are bin edges because the cost only drops when the TTL reaches a gap; binning is exact there.
        On ties the shorter TTL wins.

        ``open_reads`` (from ``bin_open_reads``) are reads still waiting for their next read, counted as gaps of
        their current age. Closed gaps alone under-count long gaps (those close last), which biases the TTL short;
        this guess errs long instead, on purpose: a too-short TTL costs a re-fetch, a too-long one some storage,
        and T_even bounds it. (A Kaplan-Meier estimate that censors open reads at their age was tried and cost
        more on the shipped traces: it trusts few closed gaps and cuts TTLs to 0 early.)"""
        weights, sums, beyond = self.weights, self.sums, self.beyond
        if open_reads is not None:
            weights, sums, beyond = weights + open_reads[0], sums + open_reads[1], beyond + open_reads[2]
        hits = np.cumsum(weights)               # gaps covered when ttl = edges[k]
        kept_seconds = np.cumsum(sums)          # storage-seconds of covered gaps
        closed = hits[-1]
        misses = closed - hits                  # re-fetches at ttl = edges[k]
        cost = storage_per_s * (kept_seconds + self.edges * (misses + beyond)) + egress * misses
        allowed = self.edges <= limit
        cost_at_zero = egress * closed
        if not allowed.any():
            return 0.0
        k = int(np.argmin(np.where(allowed, cost, np.inf)))
        return float(self.edges[k]) if cost[k] < cost_at_zero else 0.0


class LearnedTTLPolicy(Policy):
    """Learned TTL per region from the history of re-read gaps (time between consecutive reads of one object in
    one region), bounded above by T_even(source, region). A read not followed by another within the region's
    horizon counts as "beyond" once it ages past it (noticed lazily on later reads). Reads recorded with their
    ``size`` weigh by it (in GB), so the TTL minimises dollars rather than the number of misses; reads without a
    size weigh as 1 GB each."""

    name = "learned"

    def __init__(self, prices: Prices, clouds: Mapping[str, str], min_history: int = MIN_HISTORY,
                 max_tracked_keys: int = MAX_TRACKED_KEYS):
        self._costs = _CloudPrices(prices, clouds)
        self.min_history = min_history
        self.max_tracked_keys = max_tracked_keys
        self._lock = threading.Lock()
        self._histograms: dict[str, GapHistogram] = {}
        # region -> (bucket, key) -> (last read time, weight), least recently read first
        self._last_read: dict[str, OrderedDict] = {}
        self._reads: dict[str, int] = {}
        self._open_bins: dict[str, tuple[int, tuple]] = {}  # region -> (reads when binned, bin_open_reads(...))

    def _histogram(self, region: str) -> GapHistogram:
        h = self._histograms.get(region)
        if h is None:
            h = self._histograms[region] = GapHistogram(self._costs.horizon(region))
            self._last_read[region] = OrderedDict()
        return h

    def record_read(self, region: str, bucket: str, key: str, now: float, size: int | None = None) -> None:
        weight = size / GB if size is not None else 1.0
        with self._lock:
            h = self._histogram(region)
            last = self._last_read[region]
            previous = last.pop((bucket, key), None)
            if previous is not None:
                previous_time, previous_weight = previous
                h.add_gap(max(0.0, now - previous_time), previous_weight)
            last[(bucket, key)] = (now, weight)
            self._reads[region] = self._reads.get(region, 0) + 1
            self._age_out(h, last, now)

    @staticmethod
    def _age_out(h: GapHistogram, last: OrderedDict, now: float) -> None:
        """Reads older than the horizon with no re-read: count them as ``beyond`` and forget them."""
        horizon = h.edges[-1]
        while last:
            oldest_key = next(iter(last))
            read_time, weight = last[oldest_key]
            if now - read_time <= horizon:
                break
            del last[oldest_key]
            h.add_beyond(weight)

    def ttl(self, region: str, source: str, now: float) -> float:
        limit = self._costs.t_even(source, region)
        with self._lock:
            h = self._histogram(region)
            last = self._last_read[region]
            while len(last) > self.max_tracked_keys:  # memory bound: forget the oldest, unobserved
                last.popitem(last=False)
            storage = self._costs.storage_per_second(region)
            if h.observations < self.min_history or storage <= 0:  # free storage: keep for the full T_even
                return limit
            open_reads = self._binned_open_reads(region, h, last, now)
            return min(limit, h.best_ttl(storage, self._costs.egress(source, region), limit, open_reads))

    def _binned_open_reads(self, region: str, h: GapHistogram, last: OrderedDict, now: float) -> tuple:
        """The open reads binned by age; rebuilt once reads since the last build reach 1/16 of their number,
        so a gateway tracking many keys pays O(1) amortised per read (ages drift slightly in between)."""
        reads = self._reads.get(region, 0)
        cached = self._open_bins.get(region)
        if cached is not None and reads - cached[0] < max(1, len(last) // OPEN_READS_REFRESH):
            return cached[1]
        if last:
            times, weights = np.array(list(last.values()), dtype=float).T
            binned = h.bin_open_reads(np.maximum(0.0, now - times), weights)
        else:
            binned = h.bin_open_reads(np.zeros(0), np.zeros(0))
        self._open_bins[region] = (reads, binned)
        return binned

    def history(self, region: str) -> dict:
        """A snapshot of a region's histogram (for logs and tests)."""
        with self._lock:
            h = self._histogram(region)
            return {"edges": h.edges.tolist(), "weights": h.weights.tolist(), "beyond": h.beyond,
                    "observations": h.observations}


def make_policy(spec: str | None, prices: Prices, clouds: Mapping[str, str]) -> Policy:
    """A policy from its spec (see the module docstring); ``clouds`` maps region names to cloud identities."""
    text = (spec or DEFAULT_POLICY).strip().lower()
    if text == "learned":
        return LearnedTTLPolicy(prices, clouds)
    if text in ("t_even", "t-even", "teven", "ttl"):
        return TEvenPolicy(prices, clouds)
    if text == "always-store":
        return FixedTTLPolicy(math.inf, name="always-store")
    if text == "always-evict":
        return FixedTTLPolicy(0.0, name="always-evict")
    if text == "replicate-all":
        return ReplicateAllPolicy()
    if text.startswith("fixed:"):
        try:
            seconds = float(text.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"bad fixed TTL {spec!r}: expected fixed:SECONDS, e.g. fixed:3600") from None
        return FixedTTLPolicy(seconds)
    raise ValueError(f"unknown placement policy {spec!r}; choose one of: {', '.join(POLICY_NAMES)}")

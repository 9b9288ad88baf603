"""The learned TTL: per class of reads, the TTL with the least expected cost under the re-read pattern seen.

A read in region r of an object based elsewhere leaves (or refreshes) a copy kept ``ttl`` seconds. Reads fall
into classes by region, object size (7 classes, factors of 8 from 1 kB) and how often the object was read in
that region before (first, second, later read: objects read once and objects read often behave differently).
For each class the policy keeps, for each candidate TTL tau (0, 4 per decade from 1 s up to the longest T_even,
and every T_even into the region), the GB-seconds at risk up to tau (every read, re-read or not yet, counts
until its re-read or now) and the GB re-read after tau. Between candidates that gives the re-read hazard
(GB re-read / GB-seconds at risk), hence the survival P(no re-read within x) and the expected cost of a read:

    GB x (storage x E[min(gap, tau)] + egress x P(re-read after tau)) + PUT x P(the read is a miss), tau > 0

Each hazard is shrunk toward the break-even rate (where keeping and re-fetching cost the same) by a prior of
``PRIOR_READS`` reads' worth of bytes at risk: with few reads, or at ages past the oldest read seen, the estimate
stays near break-even. A first read is always a miss, a second one when the first read's TTL ran out before it,
and so on. Costs are priced per source at decision time (egress and T_even depend on where the copy would be
re-fetched from); the cheapest tau not above T_even(source, region) wins, but only if it saves ``MARGIN`` (10%)
of T_even's expected cost: T_even is never more than twice the optimum on any gap, and an estimate is noisy.
A class with fewer than ``MIN_HISTORY`` reads uses the estimate pooled over its size class, a thin size class
T_even (the region's pool serves only objects it has no record of).

Why not the paper's histogram of re-read gaps: gaps seen so far are the short ones (long gaps close last), so
the TTL that would have served them best is about the age of the history, and copies expire just before their
re-read (1.2x the optimum on a two-day trace where keeping every copy is within 1% of it). Fitting the
re-read hazard with every read at risk until now, censored or not, does not lose the reads still waiting.

The estimate is recomputed at read count 256, then each time the reads grow by half (about 25 times in 10
million reads), from the reads recorded alone, never from the policy's own decisions; the simulator's batch
form (``learned_batch``) therefore reproduces it exactly.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Mapping

import numpy as np

from .policy import Policy, PriceTables, _CloudPrices
from .pricing import GB, Prices

SIZE_CLASSES = 7
READ_CLASSES = 3
SIZE_EDGES = 1000 * 8 ** np.arange(SIZE_CLASSES - 1)  # 1 kB, 8 kB, ... 32 MB
CLASSES = SIZE_CLASSES * READ_CLASSES
MIN_HISTORY = 30
PRIOR_READS = 10  # reads' worth of GB at risk in every interval, re-read at the break-even rate
FIRST_EPOCH = 256
EPOCH_GROWTH = 2
SMALLEST_TTL_S = 1.0
TTLS_PER_DECADE = 4
MAX_TRACKED_KEYS = 1_000_000  # per region: the oldest are forgotten (memory of a long-running gateway)
MARGIN = 0.1  # the share of T_even's expected cost a shorter TTL must save to be chosen
NEAR = 1e-9  # costs this close (relative) count as equal; the longest TTL among them wins
DEFAULT_HORIZON_S = 365 * 86400.0  # the longest TTL into a region no other region gives a finite T_even into


def size_class(size_bytes) -> np.ndarray:
    """<1 kB, <8 kB, <64 kB, <512 kB, <4 MB, <32 MB, larger."""
    return np.searchsorted(SIZE_EDGES, np.asarray(size_bytes), side="right")


def read_class(size_bytes, reads_before) -> np.ndarray:
    return size_class(size_bytes) * READ_CLASSES + np.minimum(reads_before, READ_CLASSES - 1)


def next_boundary(n: int | None) -> int:
    """The read count of the next re-decision after the one at ``n`` (None: the first)."""
    return FIRST_EPOCH if n is None else n + max(FIRST_EPOCH, n // EPOCH_GROWTH)


class Model:
    """Candidate TTLs and prices by region index; turns accumulated costs into TTLs per source."""

    def __init__(self, prices: PriceTables):
        self.regions = prices.regions
        n = len(self.regions)
        self.storage, self.put, self.egress, self.t_even = prices.storage, prices.put, prices.egress, prices.t_even
        grids = []
        for d in range(n):
            finite = [self.t_even[s, d] for s in range(n) if s != d and math.isfinite(self.t_even[s, d])]
            horizon = max(finite, default=DEFAULT_HORIZON_S)
            decades = max(1, math.ceil(math.log10(max(horizon, SMALLEST_TTL_S * 10) / SMALLEST_TTL_S)))
            grid = np.geomspace(SMALLEST_TTL_S, SMALLEST_TTL_S * 10 ** decades, decades * TTLS_PER_DECADE + 1)
            grids.append(np.unique(np.r_[0.0, grid[grid < horizon], finite, horizon]))
        k = max((len(g) for g in grids), default=1)
        self.ttls = np.array([np.r_[g, np.full(k - len(g), g[-1])] for g in grids]).reshape(n, k)  # [region, tau]
        self.k = k

    def decide(self, d: int, a, ms, f, nreads, wsum) -> np.ndarray:
        """TTLs into region ``d`` per class (and the region's pool, last) and source: shape
        (..., CLASSES + 1, regions). ``a``: (..., CLASSES, K) GB-seconds at risk up to each candidate; ``ms``: GB
        of closed gaps longer than each candidate; ``f``/``nreads``/``wsum``: (..., CLASSES) reads entering the
        class (an object's 1st, 2nd or 3rd read in the region), reads and their GB.

        Expected cost of a read kept tau: its GB x (storage x expected seconds kept + egress x P(re-read after
        tau)), plus a PUT when tau > 0 and the read is a miss: always for a first read; for a second read when
        the first read's TTL ran out before it; for later reads, the third when the second's TTL ran out, the
        rest as often as their own gaps outlast tau. A class with few reads takes its size's pool (all read
        counts), a thin size pool T_even: objects of another size say little about these."""
        lead = a.shape[:-2]
        k = a.shape[-1]
        by_size = (lambda x, tail: x.reshape(lead + (SIZE_CLASSES, READ_CLASSES) + tail).sum(len(lead) + 1))
        a = np.concatenate([a, by_size(a, (k,)), a.sum(-2, keepdims=True)], -2)   # classes, sizes, region
        ms = np.concatenate([ms, by_size(ms, (k,)), ms.sum(-2, keepdims=True)], -2)
        firsts = np.concatenate([f[..., ::READ_CLASSES], f[..., ::READ_CLASSES].sum(-1, keepdims=True)], -1)
        f, nreads, wsum = (np.concatenate([x, by_size(x, ()), x.sum(-1, keepdims=True)], -1)
                           for x in (f, nreads, wsum))
        ttl, te = self.ttls[d], self.t_even[:, d]
        out_shape = lead + (CLASSES + 1, len(te))
        if self.storage[d] <= 0:
            return np.broadcast_to(te, out_shape).copy()
        reads = np.maximum(nreads, 1)
        finite = te[np.isfinite(te) & (te > 0)]
        prior_rate = 1.0 / finite.min() if len(finite) else 0.0
        surv, stored = survival(ttl, a, ms, prior_rate, PRIOR_READS * wsum / reads)  # (..., rows, K)
        refetched = after_gap = surv                                        # P(re-read after the TTL)
        per_read = (wsum / reads)[..., None, None]                          # GB
        put = self.put[d] * (ttl > 0)
        # a re-fetch costs egress, and a PUT when the copy is kept again (as this candidate would)
        egress = self.egress[:, d][:, None] * refetched[..., None, :]
        base = (per_read * (self.storage[d] * stored[..., None, :] + egress)
                + (put * refetched)[..., None, :])                         # (..., rows, R, K)
        enough = nreads >= MIN_HISTORY
        te_index = np.searchsorted(ttl, np.minimum(te, ttl[-1]))
        rows = [np.arange(n, CLASSES, READ_CLASSES) for n in range(READ_CLASSES)]  # first, second, later reads
        pools = CLASSES + np.arange(SIZE_CLASSES + 1)                       # sizes, then the region
        first_share = (firsts / reads[..., pools])[..., None]
        pooled = first_share + (1 - first_share) * after_gap[..., pools, :]
        pool_pick = _cheapest(base[..., pools, :, :] + put * pooled[..., None, :], ttl, te)  # (..., 8, R)
        pool_used = np.where(enough[..., pools, None], pool_pick, te_index)
        size_pool = pool_used[..., :SIZE_CLASSES, :]

        def used(p, n):  # the candidate actually used by class-n reads: thin classes take their size's pool
            return np.where(enough[..., rows[n], None], p, size_pool)

        def gap_after(n):  # P(a gap after a class-n read outlasts each candidate), the pool's for thin classes
            return np.where(enough[..., rows[n], None], after_gap[..., rows[n], :], after_gap[..., CLASSES:-1, :])

        out = np.empty(out_shape, np.int64)
        out[..., -1, :] = pool_used[..., -1, :]
        out[..., rows[0], :] = p0 = used(_cheapest(base[..., rows[0], :, :] + put, ttl, te), 0)  # always a miss
        miss1 = np.take_along_axis(gap_after(0), p0, -1)                                       # (..., sizes, R)
        out[..., rows[1], :] = p1 = used(_cheapest(base[..., rows[1], :, :] + put * miss1[..., None], ttl, te), 1)
        entry = (f[..., rows[2]] / reads[..., rows[2]])[..., None, None]                       # third reads' share
        miss2 = (entry * np.take_along_axis(gap_after(1), p1, -1)[..., None]
                 + (1 - entry) * after_gap[..., rows[2], None, :])
        out[..., rows[2], :] = used(_cheapest(base[..., rows[2], :, :] + put * miss2, ttl, te), 2)
        return ttl[out]

    def t_even_table(self) -> np.ndarray:
        """Before any history: T_even(source, region) for every class. Shape (regions, CLASSES + 1, regions)."""
        return np.repeat(self.t_even.T[:, None, :], CLASSES + 1, axis=1)


def _cheapest(cost: np.ndarray, ttls: np.ndarray, te: np.ndarray) -> np.ndarray:
    """Index of the cheapest candidate not above T_even(source), among near-equal costs the longest; T_even
    itself unless the cheapest saves ``MARGIN`` of its cost (T_even is never more than twice the optimum on
    any gap; a shorter TTL must be clearly worth the risk). ``cost``: (..., sources, K)."""
    allowed = ttls[None, :] <= te[:, None] * (1 + 1e-12)
    cost = np.where(allowed, cost, np.inf)
    best = cost.min(-1, keepdims=True)
    near = cost <= best + NEAR * np.abs(best)
    pick = len(ttls) - 1 - np.argmax(near[..., ::-1], -1)
    at_te = np.searchsorted(ttls, np.minimum(te, ttls[-1]))                 # (sources,)
    te_cost = np.take_along_axis(cost, np.broadcast_to(at_te[:, None], cost.shape[:-1] + (1,)), -1)[..., 0]
    return np.where(best[..., 0] < (1 - MARGIN) * te_cost, pick, at_te)


def survival(ttls: np.ndarray, a: np.ndarray, ms: np.ndarray, prior_rate: float, prior_gb: np.ndarray):
    """Re-read survival at each candidate TTL. Between candidates the hazard is (GB re-read in that interval) /
    (GB-seconds at risk in it), both plus a prior: ``prior_gb`` GB at risk throughout, re-read at
    ``prior_rate`` (the break-even rate, where keeping and re-fetching cost the same). Few reads, or ages past
    the oldest read seen, leave the estimate near break-even, where the longest TTL wins; many reads decide.
    Returns P(no re-read yet) at each candidate and the expected seconds kept (its integral up to each)."""
    delta = np.diff(ttls)
    exposure = np.maximum(np.diff(a, axis=-1), 0.0)
    events = np.maximum(ms[..., :-1] - ms[..., 1:], 0.0)
    pseudo = prior_gb[..., None] * delta
    rate = (events + prior_rate * pseudo) / np.maximum(exposure + pseudo, 1e-300)
    decay = np.exp(-rate * delta)
    surv = np.concatenate([np.ones(rate.shape[:-1] + (1,)), np.cumprod(decay, -1)], -1)
    steep = rate * delta > 1e-12
    piece = np.where(steep, surv[..., :-1] * (1 - decay) / np.where(steep, rate, 1.0), surv[..., :-1] * delta)
    stored = np.concatenate([np.zeros(rate.shape[:-1] + (1,)), np.cumsum(piece, -1)], -1)
    return surv, stored


def open_storage(ttls: np.ndarray, ages: np.ndarray, weights: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Storage GB-s so far of reads not re-read yet, per class and candidate: sum of S * min(age, tau)."""
    k = len(ttls)
    j = np.searchsorted(ttls, ages, side="right")  # candidates <= age: those pay tau * S, the rest age * S
    cells = classes * (k + 1) + j
    s = np.bincount(cells, weights, minlength=CLASSES * (k + 1)).reshape(CLASSES, k + 1)
    sa = np.bincount(cells, weights * ages, minlength=CLASSES * (k + 1)).reshape(CLASSES, k + 1)
    above = s[:, ::-1].cumsum(1)[:, ::-1][:, 1:]       # sum of S over j_read > candidate index
    below = sa.cumsum(1)[:, :-1]                       # sum of S * age over j_read <= candidate index
    return ttls * above + below


def closed_costs(ttls: np.ndarray, gaps: np.ndarray, weights: np.ndarray, classes: np.ndarray):
    """Per class and candidate, of closed gaps: GB-seconds at risk sum S * min(gap, tau), and GB with gap > tau."""
    k = len(ttls)
    j = np.searchsorted(ttls, gaps, side="left")  # candidates < gap: a miss
    cells = classes * (k + 1) + j
    s = np.bincount(cells, weights, minlength=CLASSES * (k + 1)).reshape(CLASSES, k + 1)
    sg = np.bincount(cells, weights * gaps, minlength=CLASSES * (k + 1)).reshape(CLASSES, k + 1)
    missed = s[:, ::-1].cumsum(1)[:, ::-1][:, 1:]     # S over reads with j > candidate: gap > tau
    storage = ttls * missed + sg.cumsum(1)[:, :-1]
    return storage, missed


class Tally:
    """What the learned TTL has counted per region and class of reads, and when it next re-decides: the same
    state for the read-by-read policy and its batch form (``learned_batch``)."""

    def __init__(self, model: Model):
        self.model = model
        n, k = len(model.regions), model.k
        self.a = np.zeros((n, CLASSES, k))   # GB-seconds at risk up to each candidate TTL, of closed gaps
        self.ms = np.zeros((n, CLASSES, k))  # GB of closed gaps longer than each candidate
        self.f = np.zeros((n, CLASSES))      # reads entering the class (an object's 1st, 2nd or 3rd read)
        self.w = np.zeros((n, CLASSES))      # GB read
        self.n = np.zeros((n, CLASSES))      # reads
        self.count = 0                       # reads recorded
        self.boundary = next_boundary(None)  # the read count of the next re-decision
        self.table = model.t_even_table()    # TTLs [region, class (the region's pool last), source]

    def close_gaps(self, d: int, gaps: np.ndarray, weights: np.ndarray, classes: np.ndarray) -> None:
        """Re-read gaps that closed in region ``d``, after reads of the given GB and classes."""
        storage, missed = closed_costs(self.model.ttls[d], gaps, weights, classes)
        self.a[d] += storage
        self.ms[d] += missed


class LearnedTTLPolicy(Policy):
    """See the module docstring. Thread-safe; reads in the object's base region are not recorded (they never
    need a copy). Reads recorded without a size weigh as 1 GB."""

    name = "learned"

    def __init__(self, prices: Prices, clouds: Mapping[str, str], max_tracked_keys: int = MAX_TRACKED_KEYS):
        self._costs = _CloudPrices(prices, clouds)  # T_even for regions outside ``clouds``
        self.model = Model(PriceTables(prices, clouds, list(clouds)))
        self._index = {r: i for i, r in enumerate(self.model.regions)}
        self.max_tracked_keys = max_tracked_keys
        self._lock = threading.Lock()
        self._last = [OrderedDict() for _ in self.model.regions]  # (bucket, key) -> (time, GB, reads, class)
        self._tally = Tally(self.model)
        self._batch = None

    def record_read(self, region: str, bucket: str, key: str, now: float, size: int | None = None,
                    base: str | None = None) -> None:
        d = self._index.get(region)
        if d is None or region == base:
            return
        weight = size / GB if size is not None else 1.0
        tally = self._tally
        with self._lock:
            if tally.count == tally.boundary:
                self._refresh(now)
                tally.boundary = next_boundary(tally.boundary)
            tally.count += 1
            last = self._last[d]
            previous = last.pop((bucket, key), None)
            reads_before = 0
            if previous is not None:
                t0, w0, reads_before, c0 = previous
                tally.close_gaps(d, np.array([max(0.0, now - t0)]), np.array([w0]), np.array([c0]))
            c = int(read_class(size if size is not None else GB, reads_before))
            tally.n[d, c] += 1
            tally.w[d, c] += weight
            if reads_before < READ_CLASSES:  # the read that enters its class (the 1st, 2nd or 3rd)
                tally.f[d, c] += 1
            last[(bucket, key)] = (now, weight, reads_before + 1, c)
            while len(last) > self.max_tracked_keys:
                last.popitem(last=False)

    def _refresh(self, now: float) -> None:
        tally = self._tally
        tables = []
        for d, last in enumerate(self._last):
            if last:
                t, w, _, c = (np.array(col) for col in zip(*last.values()))
                a_open = open_storage(self.model.ttls[d], np.maximum(0.0, now - t), w, c.astype(np.int64))
            else:
                a_open = 0.0
            tables.append(self.model.decide(d, tally.a[d] + a_open, tally.ms[d], tally.f[d], tally.n[d],
                                            tally.w[d]))
        tally.table = np.array(tables)

    def ttl(self, region: str, source: str, now: float, bucket: str | None = None, key: str | None = None) -> float:
        d, s = self._index.get(region), self._index.get(source)
        if d is None or s is None:
            return self._costs.t_even(source, region)
        with self._lock:
            seen = self._last[d].get((bucket, key)) if key is not None else None
            c = seen[3] if seen is not None else CLASSES  # unknown: the region's pooled choice
            return float(self._tally.table[d, c, s])

    def batch_ttls(self, batch) -> np.ndarray:
        from .learned_batch import BatchLearner

        if self._batch is None:
            self._batch = BatchLearner(self.model)
        return self._batch.ttls(batch)

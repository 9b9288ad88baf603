"""The learned TTL for a whole batch of reads at once (the fast simulator's form of ``learned.LearnedTTLPolicy``).

Same reads in, same TTLs out as the read-by-read policy, computed with array operations. The costs a fixed TTL
tau would have accrued by a re-decision time T are sums over reads of S * min(T - t, gap, tau), evaluated for
every re-decision in the batch at once as three "ramps" (sums of S * (T - x) over points x < T):
starts at t, minus closed ends at t + gap for gaps <= tau, minus TTL ends at t + tau for gaps > tau. The last
kind needs, per (class, candidate), sums over reads with t < T - tau: a search in the reads sorted by time.
"""
from __future__ import annotations

import numpy as np

from .learned import CLASSES, READ_CLASSES, Model, Tally, next_boundary, read_class
from .pricing import GB
from .trace_arrays import stable_order

NEVER = np.iinfo(np.int64).max


class BatchLearner(Tally):
    """The policy's tally, plus the last read of every key in every region (by key id, grown as ids come)."""

    def __init__(self, model: Model):
        super().__init__(model)
        n = len(model.regions)
        self.last_t = np.full((0, n), np.nan)
        self.last_w = np.zeros((0, n))
        self.last_n = np.zeros((0, n), np.int64)
        self.last_c = np.zeros((0, n), np.int64)

    def _grow(self, n_keys: int) -> None:
        have = len(self.last_t)
        if n_keys <= have:
            return
        extra = max(n_keys, 2 * have) - have
        r = self.last_t.shape[1]
        self.last_t = np.vstack([self.last_t, np.full((extra, r), np.nan)])
        self.last_w = np.vstack([self.last_w, np.zeros((extra, r))])
        self.last_n = np.vstack([self.last_n, np.zeros((extra, r), np.int64)])
        self.last_c = np.vstack([self.last_c, np.zeros((extra, r), np.int64)])

    def ttls(self, batch) -> np.ndarray:
        model = self.model
        cols = np.array([model.regions.index(r) for r in batch.regions])
        reg, base = cols[batch.region], cols[batch.base]
        out = np.zeros((len(reg), len(cols)))
        rec = np.flatnonzero(reg != base)  # reads in the base region are not recorded
        m = len(rec)
        if not m:
            return out
        r, k, t = reg[rec], batch.key[rec], batch.time[rec]
        size = batch.size[rec]
        w = size / GB
        self._grow(int(k.max()) + 1)
        n0 = self.count

        # each read's class, and its gap to the next read of the key in the region within this batch
        nk = len(self.last_t)
        o = stable_order(r * nk + k)  # by region, key, then time
        rs, ks = r[o], k[o]
        gfirst = np.r_[True, (rs[1:] != rs[:-1]) | (ks[1:] != ks[:-1])]
        glast = np.r_[gfirst[1:], True]
        gstart = np.maximum.accumulate(np.where(gfirst, np.arange(m), 0))
        before = self.last_n[ks, rs] + np.arange(m) - gstart
        cls = np.empty(m, np.int64)
        cls[o] = read_class(size[o], before)
        first_read = np.zeros(m, bool)  # a read entering its class: an object's 1st, 2nd or 3rd in the region
        first_read[o] = before < READ_CLASSES
        gap = np.full(m, np.inf)
        close = np.full(m, NEVER)
        nxt = np.r_[o[1:], 0]
        gap[o] = np.where(glast, np.inf, t[nxt] - t[o])
        close[o] = np.where(glast, NEVER, n0 + nxt)

        # reads from earlier batches not re-read yet: closed by the first read of their key here, if any
        ck, cr = np.nonzero(~np.isnan(self.last_t))
        c_t, c_w, c_c = self.last_t[ck, cr], self.last_w[ck, cr], self.last_c[ck, cr]
        heads = o[gfirst]
        hkey = r[heads] * nk + k[heads]  # sorted: o orders by region, then key
        j = np.clip(np.searchsorted(hkey, cr * nk + ck), 0, len(hkey) - 1)
        found = hkey[j] == cr * nk + ck
        c_gap = np.where(found, t[heads[j]] - c_t, np.inf)
        c_close = np.where(found, n0 + heads[j], NEVER)

        it = np.r_[c_t, t]
        iw, ir, ic = np.r_[c_w, w], np.r_[cr, r], np.r_[c_c, cls]
        ig, iclose = np.r_[c_gap, gap], np.r_[c_close, close]
        jj = np.empty(len(it), np.int64)  # each read's candidate index: candidates below its gap are misses
        for d in range(len(model.regions)):
            sel = ir == d
            jj[sel] = np.searchsorted(model.ttls[d], ig[sel], side="left")

        bounds = []
        b = self.boundary
        while b < n0 + m:
            bounds.append(b)
            b = next_boundary(b)
        self.boundary = b
        bounds = np.array(bounds, np.int64)
        if len(bounds):
            tables = self._tables(bounds, t[bounds - n0], n0, m, r, cls, w, first_read, it, iw, ir, ic, ig, iclose,
                                  jj)
            epoch = np.searchsorted(bounds, n0 + np.arange(m), side="right")
            every = np.concatenate([self.table[None], tables])
            rows = (epoch * len(model.regions) + r) * (CLASSES + 1) + cls
            self.table = tables[-1]
        else:
            every, rows = self.table, r * (CLASSES + 1) + cls
        chosen = every.reshape(-1, every.shape[-1])[rows]  # one row of TTLs (by source) per read
        if not np.array_equal(cols, np.arange(len(cols))):
            chosen = chosen[:, cols]
        if m == len(reg):  # the simulator hands over only reads that need a TTL
            out = chosen
        else:
            out[rec] = chosen

        # carry: closed gaps, counts and the last read of every key
        done = np.isfinite(ig)
        for d in range(len(model.regions)):
            sel = done & (ir == d)
            self.close_gaps(d, ig[sel], iw[sel], ic[sel])
        self.n += np.bincount(r * CLASSES + cls, minlength=self.n.size).reshape(self.n.shape)
        self.w += np.bincount(r * CLASSES + cls, w, minlength=self.w.size).reshape(self.w.shape)
        self.f += np.bincount((r * CLASSES + cls)[first_read], minlength=self.f.size).reshape(self.f.shape)
        lo = o[glast]
        self.last_t[k[lo], r[lo]] = t[lo]
        self.last_w[k[lo], r[lo]] = w[lo]
        self.last_c[k[lo], r[lo]] = cls[lo]
        self.last_n[k[lo], r[lo]] += (np.flatnonzero(glast) - gstart[glast] + 1)
        self.count += m
        return out

    def _tables(self, bounds, times, n0, m, r, cls, w, first_read, it, iw, ir, ic, ig, iclose, jj) -> np.ndarray:
        """The TTL table after each re-decision in ``bounds`` (read indices), taken at ``times``."""
        model = self.model
        nr, k, e = len(model.regions), model.k, len(bounds)
        rc = nr * CLASSES
        ref = times[0]  # times relative to the first re-decision: smaller numbers, less rounding
        T = times - ref
        it = it - ref

        # reads and first reads before each re-decision
        ep = np.searchsorted(bounds, n0 + np.arange(m), side="right")
        cell = r * CLASSES + cls
        nreads = _cumulative(ep, cell, np.ones(m), e, rc) + self.n.reshape(-1)
        firsts = _cumulative(ep[first_read], cell[first_read], np.ones(first_read.sum()), e, rc) + self.f.reshape(-1)
        wsum = _cumulative(ep, cell, w, e, rc) + self.w.reshape(-1)

        icell = ir * CLASSES + ic
        # misses closed before each re-decision (by read index)
        closed = iclose < NEVER
        ec = np.searchsorted(bounds, iclose[closed], side="right")
        flat = icell[closed] * (k + 1) + jj[closed]
        ms = _cumulative(ec, flat, iw[closed], e, rc * (k + 1)).reshape(e, rc, k + 1)
        ms = ms[:, :, ::-1].cumsum(2)[:, :, ::-1][:, :, 1:] + self.ms.reshape(rc, k)

        # storage by each re-decision: starts - closed ends - TTL ends
        es = np.searchsorted(T, it, side="left")  # re-decisions at or after the read
        s1 = _cumulative(es, icell, iw, e, rc)
        st1 = _cumulative(es, icell, iw * it, e, rc)
        a = (T[:, None] * s1 - st1)[:, :, None]
        fin = np.isfinite(ig)
        cend = it[fin] + ig[fin]
        ee = np.searchsorted(T, cend, side="left")
        flat = icell[fin] * (k + 1) + jj[fin]
        s2 = _cumulative(ee, flat, iw[fin], e, rc * (k + 1)).reshape(e, rc, k + 1).cumsum(2)[:, :, :-1]
        st2 = _cumulative(ee, flat, iw[fin] * cend, e, rc * (k + 1)).reshape(e, rc, k + 1).cumsum(2)[:, :, :-1]
        a = a - (T[:, None, None] * s2 - st2)
        a = a - self._ttl_ends(T, it, iw, icell, jj, e, rc, k)
        a[:, :, 0] = 0.0  # tau = 0 keeps nothing (exactly, whatever the rounding above)
        a = np.maximum(a, 0.0) + self.a.reshape(rc, k)

        tables = np.empty((e, nr, CLASSES + 1, nr))
        for d in range(nr):
            rows = slice(d * CLASSES, (d + 1) * CLASSES)
            tables[:, d] = model.decide(d, a[:, rows], ms[:, rows], firsts[:, rows], nreads[:, rows], wsum[:, rows])
        return tables

    def _ttl_ends(self, T, it, iw, icell, jj, e, rc, k) -> np.ndarray:
        """Per re-decision, cell and candidate j: sum of S * (T - tau_j - t) over reads with gap > tau_j and
        t < T - tau_j (their copy would have expired by T). Per region, the thresholds u = T - tau_j are few:
        reads are binned by how many thresholds they precede, then summed cumulatively."""
        out = np.zeros((e, rc, k))
        for d in range(len(self.model.regions)):
            sel = icell // CLASSES == d
            if not sel.any():
                continue
            u = T[:, None] - self.model.ttls[d][None, :]                    # (e, k)
            thresholds, q = np.unique(u, return_inverse=True)
            q = q.reshape(e, k)
            nq = len(thresholds) + 1
            b = np.searchsorted(thresholds, it[sel], side="right")         # a read counts for thresholds > b
            cells = ((icell[sel] % CLASSES) * (k + 1) + jj[sel]) * nq + b
            size = CLASSES * (k + 1) * nq
            w = np.bincount(cells, iw[sel], minlength=size).reshape(CLASSES, k + 1, nq).cumsum(2)
            wt = np.bincount(cells, iw[sel] * it[sel], minlength=size).reshape(CLASSES, k + 1, nq).cumsum(2)
            longer = w[:, ::-1].cumsum(1)[:, ::-1][:, 1:]                  # reads with gap > tau_j, per j
            longer_t = wt[:, ::-1].cumsum(1)[:, ::-1][:, 1:]
            j = np.arange(k)[None, :]
            at_w = longer[:, j, q]                                           # (classes, e, k)
            at_wt = longer_t[:, j, q]
            out[:, d * CLASSES:(d + 1) * CLASSES] = (u[None] * at_w - at_wt).transpose(1, 0, 2)
        return out


def _cumulative(epoch: np.ndarray, cell: np.ndarray, weights: np.ndarray, e: int, cells: int) -> np.ndarray:
    """(e, cells): sums of ``weights`` over items with ``epoch <= row``."""
    inside = epoch < e
    hist = np.bincount(epoch[inside] * cells + cell[inside], weights[inside], minlength=e * cells)
    return hist.reshape(e, cells).cumsum(0)

"""The trace simulator, vectorised: the costs of ``simulator.replay`` at millions of operations per second.

The trace is replayed in chunks of rows; between chunks the state is per object (its current version, base
region, size, and per region the copy's expiry and start), so memory grows with the objects, not the trace.
Within a chunk every read is decided at once:

* a copy in region r of one object version lives from a miss that kept it (TTL > 0) while reads keep coming
  before its expiry; its expiry after each read is the running maximum of ``read time + TTL`` along the
  (version, region) chain of reads, so hits are "time <= previous running maximum" (a grouped cumulative max);
* a miss is served by the cheapest live copy, which depends on the other regions' chains, and the TTL may depend
  on that source (T_even of the pair). Sources are first guessed as the base copy, then chains and sources are
  recomputed until nothing changes. Events only depend on earlier ones, so this settles on the one consistent
  answer, which is what the event-by-event replay computes; it takes a few passes.

Policies give their TTLs for a batch of reads (``batch_ttls``: one row per read, one column per possible source).
The learned policy learns from reads alone, never from its own decisions, so its batch form is exact. The
clairvoyant optimum needs each read's next re-read gap: one float per read, computed up front.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .policy import Policy, PriceTables
from .pricing import GB, Prices
from .simulator import EXPIRY_SLACK_S, CostReport  # the event replay's slack: both call the same reads hits
from .trace_arrays import OP_DELETE, OP_HEAD, OP_READ, OP_WRITE, TraceArrays, stable_order

CHUNK = 1_000_000
MAX_PASSES = 200


@dataclass
class ReadBatch:
    """The reads of one chunk that may need a TTL (not in their object's base region), in trace order, handed
    to ``Policy.batch_ttls``."""
    regions: list[str]      # region names by index
    region: np.ndarray      # reader region index
    base: np.ndarray        # base copy's region index
    key: np.ndarray         # key id
    time: np.ndarray
    size: np.ndarray        # bytes
    next_gap: np.ndarray | None = None  # seconds to the next read of this version in this region (optimum only)


def source_rank(egress: np.ndarray, regions: Sequence[str]) -> np.ndarray:
    """[dst, base, src]: the preference among sources into dst when the base is b, as the event replay's
    ``_cheapest_source``: cheapest egress, then the base, then by name."""
    n = len(regions)
    names = np.argsort(np.argsort(list(regions)))
    rank = np.zeros((n, n, n), np.int16)
    for d in range(n):
        dense = np.unique(egress[:, d], return_inverse=True)[1]
        for b in range(n):
            rank[d, b] = dense * 4 * n + (np.arange(n) != b) * 2 * n + names
    return rank


class FastReplay:
    """Replays a ``TraceArrays`` chunk by chunk under one policy; ``run`` gives a ``CostReport``."""

    def __init__(self, policy: Policy, prices: Prices, clouds: Mapping[str, str], regions: Sequence[str],
                 n_keys: int):
        self.policy = policy
        self.regions = list(regions)
        self.R = len(self.regions)
        self.p = PriceTables(prices, clouds, self.regions)
        self.source_rank = source_rank(self.p.egress, self.regions)
        self.report = CostReport(policy.name)
        self.storage = np.zeros(self.R)  # GB-seconds per region, priced at the end (fewer roundings)
        # copies a write makes besides the base, and their TTLs (by writer, region)
        self.seed = np.zeros((self.R, self.R), bool)
        self.seed_ttl = np.zeros((self.R, self.R))
        for w, name in enumerate(self.regions):
            for target in policy.initial_regions(name, self.regions)[1:]:
                r = self.regions.index(target)
                if r != w:
                    self.seed[w, r] = True
                    self.seed_ttl[w, r] = policy.ttl(target, name, 0.0)
        # per key: the current version and its copies
        self.alive = np.zeros(n_keys, bool)
        self.vid = np.full(n_keys, -1, np.int64)
        self.base = np.zeros(n_keys, np.int64)
        self.vsize = np.zeros(n_keys, np.int64)
        self.wtime = np.zeros(n_keys)
        self.expiry = np.full((n_keys, self.R), -np.inf)
        self.segstart = np.full((n_keys, self.R), np.nan)
        self.next_vid = 0
        self.next_gap: np.ndarray | None = None
        self.read_offset = 0

    # ---- whole trace ----------------------------------------------------------------------------------------

    def run(self, trace: TraceArrays, chunk: int = CHUNK):
        if getattr(self.policy, "needs_next_gap", False):
            self.next_gap = next_read_gaps(trace)
        for start in range(0, len(trace), chunk):
            self._chunk(trace.rows(start, start + chunk))
        end = float(trace.time[-1]) if len(trace) else 0.0
        self._finish(end)
        return self.report

    def _finish(self, end: float) -> None:
        keys = np.flatnonzero(self.alive)
        self._store(self.base[keys], self.vsize[keys], end - self.wtime[keys])
        held = ~np.isnan(self.segstart[keys])
        rows, regions = np.nonzero(held)
        k = keys[rows]
        self._store(regions, self.vsize[k], np.minimum(self.expiry[k, regions], end) - self.segstart[k, regions])
        self.report.storage = float(np.dot(self.storage, self.p.storage))

    def _store(self, region: np.ndarray, size: np.ndarray, seconds: np.ndarray) -> None:
        self.storage += np.bincount(region, size / GB * np.maximum(0.0, seconds), minlength=self.R)

    # ---- one chunk ------------------------------------------------------------------------------------------

    def _chunk(self, c: TraceArrays) -> None:
        rep, p = self.report, self.p
        heads = c.op == OP_HEAD
        rep.heads += int(np.count_nonzero(heads))
        if heads.any():  # answered from the metadata: they change nothing
            keep = ~heads
            c = TraceArrays(c.time[keep], c.op[keep], c.region[keep], c.key[keep], c.size[keep], c.regions, c.n_keys)
        n = len(c)
        if not n:
            return
        t, op, reg, key, size = c.time, c.op, c.region.astype(np.int64), c.key, c.size

        # -- the version each event sees: the key's last write/delete in this chunk, else the carried one
        order = stable_order(key)
        ks = key[order]
        first = np.r_[True, ks[1:] != ks[:-1]]
        gstart = np.maximum.accumulate(np.where(first, np.arange(n), 0))
        wd_s = (op[order] == OP_WRITE) | (op[order] == OP_DELETE)
        last_wd = np.maximum.accumulate(np.where(wd_s, np.arange(n), -1))
        own = np.empty(n, np.int64)
        own[order] = np.where(last_wd >= gstart, order[np.maximum(last_wd, 0)], -1)  # event index or -1
        carried = own < 0
        writes = np.flatnonzero(op == OP_WRITE)
        vid_of_event = np.full(n, -1, np.int64)
        vid_of_event[writes] = self.next_vid + np.arange(len(writes))
        self.next_vid += len(writes)
        src_ev = np.maximum(own, 0)
        ctx_alive = np.where(carried, self.alive[key], op[src_ev] == OP_WRITE)
        ctx_vid = np.where(carried, self.vid[key], vid_of_event[src_ev])
        ctx_base = np.where(carried, self.base[key], reg[src_ev])
        ctx_size = np.where(carried, self.vsize[key], size[src_ev])
        ctx_wtime = np.where(carried, self.wtime[key], t[src_ev])

        # -- writes: a PUT at the writer, plus the policy's initial copies
        rep.writes += len(writes)
        rep.deletes += int(np.count_nonzero(op == OP_DELETE))
        rep.put_requests += float(p.put[reg[writes]].sum())
        if self.seed.any():
            w_reg = reg[writes]
            rows, targets = np.nonzero(self.seed[w_reg])
            w = writes[rows]
            moved = size[w] / GB
            rep.egress += float(np.dot(moved, p.egress[reg[w], targets]))
            rep.egress_gb += float(moved.sum())
            rep.get_requests += float(p.get[reg[w]].sum())
            rep.put_requests += float(p.put[targets].sum())
            rep.replicas_created += len(w)

        # -- versions that end in this chunk (a later write or delete of the key): (vid, key, base, size, wtime, end)
        prev_wd = np.r_[-1, last_wd[:-1]]
        prev_wd = np.where(first, -1, prev_wd)  # the previous write/delete of the same key, sorted order
        ends_s = np.flatnonzero(wd_s)
        prev = prev_wd[ends_s]
        from_chunk = prev >= gstart[ends_s]
        prev_ev = order[np.maximum(prev, 0)]
        end_ev = order[ends_s]
        ended_alive = np.where(from_chunk, op[prev_ev] == OP_WRITE, self.alive[key[end_ev]])
        sel = ended_alive
        e_ev, p_ev, e_from_chunk = end_ev[sel], prev_ev[sel], from_chunk[sel]
        e_key = key[e_ev]
        ended = dict(
            vid=np.where(e_from_chunk, vid_of_event[p_ev], self.vid[e_key]),
            key=e_key,
            base=np.where(e_from_chunk, reg[p_ev], self.base[e_key]),
            size=np.where(e_from_chunk, size[p_ev], self.vsize[e_key]),
            wtime=np.where(e_from_chunk, t[p_ev], self.wtime[e_key]),
            carried=~e_from_chunk,
            end=t[e_ev])
        self._store(ended["base"], ended["size"], ended["end"] - ended["wtime"])

        # -- reads
        is_read = op == OP_READ
        missing = is_read & ~ctx_alive
        rep.missing_reads += int(np.count_nonzero(missing))
        reads = np.flatnonzero(is_read & ctx_alive)
        rep.reads += len(reads)
        r_reg, r_base = reg[reads], ctx_base[reads]
        at_base = r_reg == r_base
        rep.hits += int(np.count_nonzero(at_base))
        rep.get_requests += float(p.get[r_reg[at_base]].sum())
        remote = ~at_base  # reads where the base copy lives need no TTL
        far = reads[remote]
        batch = ReadBatch(self.regions, reg[far], ctx_base[far], key[far], t[far], ctx_size[far])
        if self.next_gap is not None:
            batch.next_gap = self.next_gap[self.read_offset:self.read_offset + len(reads)][remote]
        self.read_offset += len(reads)
        ttls = self.policy.batch_ttls(batch)
        chains = _Chains(self, far, ttls, t, key, reg, ctx_vid, ctx_base, ctx_size, ctx_wtime, carried, order)
        chains.settle()
        chains.charge(rep, ended)
        self._end_versions(ended, chains)
        self._carry(c, op, key, reg, size, t, vid_of_event, last_wd, order, first, chains)

    def _end_versions(self, ended: dict, chains: "_Chains") -> None:
        """Replicas of versions that ended in this chunk and had no read in their region here."""
        if not len(ended["vid"]):
            return
        R = self.R
        vids = np.repeat(ended["vid"], R)
        regions = np.tile(np.arange(R), len(ended["vid"]))
        idx = np.repeat(np.arange(len(ended["vid"])), R)
        keep = (regions != ended["base"][idx]) & ~chains.has_chain(vids, regions)
        idx, regions = idx[keep], regions[keep]
        k = ended["key"][idx]
        car = ended["carried"][idx]
        wt = ended["wtime"][idx]
        seeded = self.seed[ended["base"][idx], regions]
        start = np.where(car, self.segstart[k, regions], np.where(seeded, wt, np.nan))
        expiry = np.where(car, self.expiry[k, regions], wt + self.seed_ttl[ended["base"][idx], regions])
        held = ~np.isnan(start)
        self._store(regions[held], ended["size"][idx][held],
                    np.minimum(expiry[held], ended["end"][idx][held]) - start[held])

    def _carry(self, c, op, key, reg, size, t, vid_of_event, last_wd, order, first, chains: "_Chains") -> None:
        """The state after this chunk for every key it touched."""
        n = len(c)
        last = np.r_[first[1:], True]  # last sorted row of each key
        k = key[order[last]]
        lw = last_wd[last]
        gs = np.maximum.accumulate(np.where(first, np.arange(n), 0))[last]
        changed = lw >= gs
        ev = order[np.maximum(lw, 0)]
        kc, evc = k[changed], ev[changed]
        written = op[evc] == OP_WRITE
        # a write or delete: the old copies are gone (charged above)
        self.expiry[kc] = -np.inf
        self.segstart[kc] = np.nan
        self.alive[kc] = written
        kw, ew = kc[written], evc[written]
        self.vid[kw], self.base[kw], self.vsize[kw], self.wtime[kw] = vid_of_event[ew], reg[ew], size[ew], t[ew]
        self.expiry[kw, self.base[kw]] = np.inf
        if self.seed.any():
            rows, regions = np.nonzero(self.seed[self.base[kw]])
            kk = kw[rows]
            self.expiry[kk, regions] = self.wtime[kk] + self.seed_ttl[self.base[kk], regions]
            self.segstart[kk, regions] = self.wtime[kk]
        chains.carry_into(self)


class _Chains:
    """The remote (non-base) reads of one chunk grouped by (version, region), in time order."""

    def __init__(self, sim: FastReplay, ev: np.ndarray, ttls: np.ndarray, t, key, reg, vid, base, size, wtime,
                 carried, key_order: np.ndarray):
        self.sim = sim
        self.t, self.key, self.reg = t[ev], key[ev], reg[ev]
        self.vid, self.base, self.size = vid[ev], base[ev], size[ev]
        self.wtime, self.carried, self.pos = wtime[ev], carried[ev], ev
        self.ttls = ttls
        m = len(ev)
        self.m = m
        # version order: the reads grouped by key, so by version, in time order (from the chunk's key order)
        row = np.full(len(t), -1)
        row[ev] = np.arange(m)
        vo = row[key_order]
        self.vorder = vo = vo[vo >= 0]
        vv = self.vid[vo]
        vfirst = np.r_[True, vv[1:] != vv[:-1]] if m else np.zeros(0, bool)
        self.vstart = np.maximum.accumulate(np.where(vfirst, np.arange(m), 0)) if m else np.zeros(0, np.int64)
        # chain order: within each version by region, in time order
        self.order = vo[stable_order((np.cumsum(vfirst) - 1) * sim.R + self.reg[vo])]
        vs, rs = self.vid[self.order], self.reg[self.order]
        self.first = np.r_[True, (vs[1:] != vs[:-1]) | (rs[1:] != rs[:-1])] if m else np.zeros(0, bool)
        self.chain = np.cumsum(self.first) - 1
        # grouping by ready-made codes spares pandas from factorising them on every pass
        self.chain_codes = pd.Categorical.from_codes(self.chain, categories=pd.RangeIndex(len(self.chain) and
                                                                                          int(self.chain[-1]) + 1))
        self.last = np.r_[self.first[1:], True] if m else np.zeros(0, bool)
        self.chain_first = np.flatnonzero(self.first)
        self.chain_last = np.flatnonzero(self.last)
        # each read's version: its copies' expiries before this chunk's reads, by region
        self.initial = self._initial()
        self.init = self.initial[np.arange(m), self.reg][self.order]  # each chain's, in chain order
        self.src = self.base.copy()
        self.hit = np.zeros(m, bool)

    def _initial(self) -> np.ndarray:
        """(reads, regions): the expiry of each read's version's copy in each region before this chunk's reads:
        carried over for versions from earlier chunks, a write's initial copies for newer ones."""
        sim, m = self.sim, self.m
        value = np.full((m, sim.R), -np.inf)
        if sim.seed.any():
            value = self.wtime[:, None] + np.where(sim.seed[self.base], sim.seed_ttl[self.base], -np.inf)
        carried = np.flatnonzero(self.carried)
        value[carried] = sim.expiry[self.key[carried]]
        value[np.arange(m), self.base] = np.inf
        return value

    def _expiries(self):
        """Per chain row: the expiry after it (P) and before it (Pprev), given the current sources and hits."""
        tau = self.ttls[np.arange(self.m), self.src]
        value = np.where(tau > 0, self.t + tau, np.where(self.hit, self.t, -np.inf))[self.order]
        running = pd.Series(value).groupby(self.chain_codes, observed=False).cummax().to_numpy() if self.m else value
        after = np.maximum(running, self.init)
        before = np.r_[-np.inf, after[:-1]] if self.m else after
        before = np.where(self.first, self.init, before)
        return tau, after, before

    def settle(self) -> None:
        """Iterate sources and hits until they agree with the copies they imply."""
        if not self.m:
            self.tau = np.zeros(0)
            return
        R, m = self.sim.R, self.m
        # liveness of other regions' copies is read in version order, where "the version's latest read in
        # region r before this one" is a running maximum; those positions do not change between passes
        vo, idx = self.vorder, np.arange(m)
        t_v, reg_v, base_v = self.t[vo], self.reg[vo], self.base[vo]
        rank_v = self.sim.source_rank[reg_v, base_v]  # (m, R)
        in_chain = np.empty(m, np.int64)
        in_chain[self.order] = idx
        chain_row = in_chain[vo]
        latest = [np.maximum.accumulate(np.where(reg_v == r, idx, -1)) for r in range(R)]
        found = [latest[r] >= self.vstart for r in range(R)]
        latest = [np.maximum(x, 0) for x in latest]
        initial_v = self.initial[vo]
        for _ in range(MAX_PASSES):
            tau, after, before = self._expiries()
            hit = np.empty(m, bool)
            hit[self.order] = self.t[self.order] <= before + EXPIRY_SLACK_S
            after_v = after[chain_row]
            live = np.empty((m, R), bool)
            for r in range(R):
                live[:, r] = np.where(found[r], after_v[latest[r]], initial_v[:, r]) + EXPIRY_SLACK_S >= t_v
            live[idx, base_v] = True
            live[idx, reg_v] = False
            src = np.empty(m, np.int64)
            src[vo] = np.argmin(np.where(live, rank_v, np.iinfo(np.int16).max), axis=1)
            if np.array_equal(src, self.src) and np.array_equal(hit, self.hit):
                break
            self.src, self.hit = src, hit
        else:
            raise RuntimeError("fast replay did not settle; use the event-by-event replay")
        self.tau, self.after, self.before = tau, after, before

    def has_chain(self, vids: np.ndarray, regions: np.ndarray) -> np.ndarray:
        if not self.m:
            return np.zeros(len(vids), bool)
        fo = self.order[self.chain_first]
        ids = np.sort(self.vid[fo] * self.sim.R + self.reg[fo])
        q = vids * self.sim.R + regions
        i = np.clip(np.searchsorted(ids, q), 0, len(ids) - 1)
        return ids[i] == q

    def charge(self, rep, ended: dict) -> None:
        """Requests, egress and the storage of every replica segment that closed in this chunk."""
        if not self.m:
            return
        p, sim = self.sim.p, self.sim
        hit, src, tau = self.hit, self.src, self.tau
        rep.hits += int(np.count_nonzero(hit))
        rep.get_requests += float(p.get[self.reg[hit]].sum())
        miss = ~hit
        moved = self.size[miss] / GB
        rep.remote_reads += int(np.count_nonzero(miss))
        rep.egress += float(np.dot(moved, p.egress[src[miss], self.reg[miss]]))
        rep.egress_gb += float(moved.sum())
        rep.get_requests += float(p.get[src[miss]].sum())
        kept = miss & (tau > 0)
        rep.put_requests += float(p.put[self.reg[kept]].sum())
        rep.replicas_created += int(np.count_nonzero(kept))

        # segments, in chain order: the one alive before the chunk (carried or a write's initial copy), then one
        # per kept miss; each ends at the expiry reached just before the next one starts, or at the chain's end
        o = self.order
        create = kept[o]
        m = self.m
        idx = np.arange(m)
        next_create = np.minimum.accumulate(np.where(create, idx, m)[::-1])[::-1]  # first creation at or after
        nxt_after = np.r_[next_create[1:], m]
        chain_end = self.chain_last[self.chain]
        closes = nxt_after <= chain_end  # a later creation in the same chain closes this segment
        seg_end = np.where(closes, self.before[np.minimum(nxt_after, m - 1)], self.after[chain_end])
        # the segment alive before the chunk, per chain
        f = self.chain_first
        fo = o[f]
        start0 = np.where(self.carried[fo], sim.segstart[self.key[fo], self.reg[fo]],
                          np.where(sim.seed[self.base[fo], self.reg[fo]], self.wtime[fo], np.nan))
        first_create = next_create[f]
        closes0 = first_create <= self.chain_last
        end0 = np.where(closes0, self.before[np.minimum(first_create, m - 1)], self.after[self.chain_last])
        # which chains' versions ended in this chunk, and when
        v_end = np.full(len(f), np.inf)
        if len(ended["vid"]):
            ev_order = np.argsort(ended["vid"])
            ev_sorted = ended["vid"][ev_order]
            j = np.clip(np.searchsorted(ev_sorted, self.vid[fo]), 0, len(ev_sorted) - 1)
            v_end = np.where(ev_sorted[j] == self.vid[fo], ended["end"][ev_order][j], np.inf)
        self.version_end = v_end
        # closed segments (followed by a creation): charged now; the last one of a chain: now if its version
        # ended here, else carried
        cr = np.flatnonzero(create)
        cr_closed = closes[cr]
        ends_here = np.isfinite(v_end[self.chain[cr]])
        charge = cr_closed | ends_here
        end_at = np.where(cr_closed, seg_end[cr], np.minimum(seg_end[cr], v_end[self.chain[cr]]))
        sim._store(self.reg[o[cr]][charge], self.size[o[cr]][charge], (end_at - self.t[o[cr]])[charge])
        held0 = ~np.isnan(start0)
        charge0 = held0 & (closes0 | np.isfinite(v_end))
        end0 = np.where(closes0, end0, np.minimum(end0, v_end))
        sim._store(self.reg[fo][charge0], self.size[fo][charge0], (end0 - start0)[charge0])
        # what a chain carries out: the open segment's start and the running expiry
        lc = np.maximum.accumulate(np.where(create, idx, -1))[self.chain_last]
        lc = np.where(lc >= f, lc, -1)
        self.out_start = np.where(lc >= 0, self.t[o[np.maximum(lc, 0)]], start0)
        self.out_expiry = self.after[self.chain_last]

    def carry_into(self, sim: FastReplay) -> None:
        """Chains whose version is still current after the chunk hand their copy state to the key."""
        if not self.m:
            return
        fo = self.order[self.chain_first]
        k, r = self.key[fo], self.reg[fo]
        live = sim.alive[k] & (sim.vid[k] == self.vid[fo])
        sim.expiry[k[live], r[live]] = self.out_expiry[live]
        sim.segstart[k[live], r[live]] = self.out_start[live]


def next_read_gaps(trace: TraceArrays) -> np.ndarray:
    """For every read of an existing object, in trace order, the time to the next read of the same version in
    the same region (inf if none): what the clairvoyant optimum knows."""
    n = len(trace)
    op, key, reg, t = trace.op, trace.key, trace.region.astype(np.int64), trace.time
    order = stable_order(key)
    ks = key[order]
    wd = (op[order] == OP_WRITE) | (op[order] == OP_DELETE)
    first = np.r_[True, ks[1:] != ks[:-1]]
    segment = np.cumsum(first | wd)  # a version (or the time before the key's first write)
    alive = np.zeros(n, bool)
    # the segment is a live version when it starts with a write
    seg_start_op = op[order][np.maximum.accumulate(np.where(first | wd, np.arange(n), 0))]
    alive_s = (seg_start_op == OP_WRITE) & (op[order] == OP_READ)
    alive[order] = alive_s
    seg = np.empty(n, np.int64)
    seg[order] = segment
    reads = np.flatnonzero(alive)  # trace order
    o = stable_order(seg[reads] * len(trace.regions) + reg[reads])  # reads is in trace order
    rs = reads[o]
    same = np.r_[(seg[rs][1:] == seg[rs][:-1]) & (reg[rs][1:] == reg[rs][:-1]), False]
    gap_sorted = np.where(same, np.r_[t[rs][1:], 0.0] - t[rs], np.inf)
    gaps = np.empty(len(reads))
    gaps[o] = gap_sorted
    return gaps


def replay_fast(trace: TraceArrays, policy: Policy, prices: Prices, clouds: Mapping[str, str] | None = None,
                regions: Sequence[str] | None = None, chunk: int = CHUNK):
    """Cost of ``trace`` under ``policy`` (see ``simulator.replay`` for the rules)."""
    regions = list(regions) if regions is not None else list(trace.regions)
    if regions != list(trace.regions):
        raise ValueError(f"regions {regions} differ from the trace's {trace.regions}")
    clouds = dict(clouds) if clouds is not None else {r: r for r in regions}
    return FastReplay(policy, prices, clouds, regions, trace.n_keys).run(trace, chunk)


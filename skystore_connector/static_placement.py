"""A static per-object placement chosen offline (SPANStore-style), as a baseline for the TTL policies.

SPANStore picks, per object and from the whole workload, the set of regions that hold a copy for the object's
life; reads outside that set are served remotely, nothing is replicated on read or evicted. Here every object
version gets the cheapest set that contains its base region, knowing the version's reads per region, its size
and its lifetime: each extra copy costs its storage for the lifetime plus the transfer, a GET at the writer and
a PUT at the write; each read costs a GET in its region if a copy is there, else the egress from the cheapest
copy plus a GET there. Writes, the base copy's storage and HEADs cost as in the simulator, so totals compare.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .policy import PriceTables
from .pricing import GB, Prices
from .simulator import CostReport
from .trace_arrays import OP_DELETE, OP_HEAD, OP_READ, OP_WRITE, TraceArrays, stable_order


def static_placement(trace: TraceArrays, prices: Prices, clouds: Mapping[str, str] | None = None,
                     regions: Sequence[str] | None = None):
    """The cost (a ``simulator.CostReport`` named ``static``) of the best fixed set of copies per version."""
    regions = list(regions) if regions is not None else list(trace.regions)
    p = PriceTables(prices, dict(clouds) if clouds is not None else {r: r for r in regions}, regions)
    nr = len(regions)
    report = CostReport("static")
    keep = trace.op != OP_HEAD
    report.heads = int(np.count_nonzero(~keep))
    op, key, reg = trace.op[keep], trace.key[keep], trace.region[keep].astype(np.int64)
    t, size = trace.time[keep], trace.size[keep]
    end = float(trace.time[-1]) if len(trace) else 0.0

    # versions: a key's events from one write to the next write or delete
    order = stable_order(key)
    k_s, op_s = key[order], op[order]
    first = np.r_[True, k_s[1:] != k_s[:-1]] if len(order) else np.zeros(0, bool)
    starts = first | (op_s == OP_WRITE) | (op_s == OP_DELETE)
    segment = np.cumsum(starts) - 1
    head = np.flatnonzero(starts)
    is_version = op_s[head] == OP_WRITE
    nxt = np.r_[head[1:], len(order)]
    same_key = np.r_[~first[head[1:]], False] if len(head) else np.zeros(0, bool)
    v_end = np.where(same_key & (nxt < len(order)), t[order][np.minimum(nxt, len(order) - 1)], end)
    v_base, v_size, v_start = reg[order][head], size[order][head], t[order][head]
    reads_s = op_s == OP_READ
    alive = is_version[segment]
    report.writes = int(np.count_nonzero(op == OP_WRITE))
    report.deletes = int(np.count_nonzero(op == OP_DELETE))
    report.missing_reads = int(np.count_nonzero(reads_s & ~alive))
    counted = reads_s & alive
    report.reads = int(np.count_nonzero(counted))
    report.put_requests += float(p.put[reg[op == OP_WRITE]].sum())

    v = np.flatnonzero(is_version)
    n_v = len(head)
    reads = np.bincount(segment[counted] * nr + reg[order][counted], minlength=n_v * nr).reshape(n_v, nr)[v]
    base, gb, life = v_base[v], v_size[v] / GB, v_end[v] - v_start[v]
    report.storage += float(np.dot(gb * life, p.storage[base]))

    best = np.full(len(v), np.inf)
    best_set = np.zeros(len(v), np.int64)
    for mask in range(1, 2 ** nr):
        members = np.array([(mask >> r) & 1 for r in range(nr)], bool)
        valid = members[base]
        if not valid.any():
            continue
        extra = members[None, :] & (np.arange(nr)[None, :] != base[:, None])  # copies besides the base
        copies = ((gb[:, None] * (p.storage[None, :] * life[:, None] + p.egress[base][:, :]) + p.put[None, :]
                   + p.get[base][:, None]) * extra).sum(1)
        src = np.where(members[:, None], p.egress, np.inf).argmin(0)  # cheapest member into each region
        remote = gb[:, None] * p.egress[src, np.arange(nr)][None, :] + p.get[src][None, :]
        serve = np.where(members[None, :], p.get[None, :], remote)
        cost = np.where(valid, copies + (reads * serve).sum(1), np.inf)
        better = cost < best
        best, best_set = np.where(better, cost, best), np.where(better, mask, best_set)
    # the chosen sets' costs, split into the report's parts
    for mask in np.unique(best_set):
        rows = best_set == mask
        members = np.array([(mask >> r) & 1 for r in range(nr)], bool)
        b, g, n = base[rows], gb[rows], reads[rows]
        extra = members[None, :] & (np.arange(nr)[None, :] != b[:, None])
        report.storage += float((g[:, None] * p.storage[None, :] * life[rows][:, None] * extra).sum())
        report.egress += float((g[:, None] * p.egress[b] * extra).sum())
        report.egress_gb += float((g[:, None] * extra).sum())
        report.put_requests += float((p.put[None, :] * extra).sum())
        report.get_requests += float((p.get[b][:, None] * extra).sum())
        report.replicas_created += int(extra.sum())
        src = np.where(members[:, None], p.egress, np.inf).argmin(0)
        away = ~members
        report.hits += int(n[:, members].sum())
        report.remote_reads += int(n[:, away].sum())
        report.get_requests += float((n * np.where(members, p.get, p.get[src])[None, :]).sum())
        report.egress += float((n * g[:, None] * np.where(away, p.egress[src, np.arange(nr)], 0.0)[None, :]).sum())
        report.egress_gb += float((n * g[:, None] * away[None, :]).sum())
    return report

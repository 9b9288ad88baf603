"""Synthetic multi-region traces that follow one IBM Cloud Object Storage trace part's published statistics.

``ibm_trace_stats.csv`` gives, per trace part, counts and histograms but no requests. ``synthesize`` draws a
trace of ``objects`` objects over ``days`` days that matches these of them (``check`` measures each on the
output next to its target):

=========================  ==========================================================================
op mix                     shares of reads, writes (PUT and COPY), HEADs and deletes among requests
read counts per object     shares of objects read 0, 1, 2-10, 10-100, ..., >1M times (so also the
                           single-read share ``%get_once/obj``); log-uniform within a bucket
object sizes               share of empty objects, of sizes <1 MB, 1-10 MB, ... >10 GB, and the median
                           (piecewise log-uniform through those points; the mean is not fitted)
re-read gaps               shares of re-read objects whose mean gap between reads is <1 s, 1 s-1 min,
                           1 min-1 h, 1-24 h, >24 h (objects read more often get the shorter gaps, as
                           they must to fit the span; gaps are exponential, scaled to the mean)
=========================  ==========================================================================

Objects read in the trace exist before it (written at time 0) unless the part's writes cover them; objects never
read are written during it; further writes overwrite; deletes come after an object's last read. Which region
issues an operation is the region model's choice:

* ``home-heavy``: each object has a home region (uniform); it writes there and 70% of its reads come from it,
  the rest from the other regions;
* ``uniform``: every read and HEAD from any region with equal chance (writes from the home);
* ``follow-the-sun``: the day is split into one working shift per region; 80% of reads come from the region
  whose shift it is, the rest from any region (writes from the home).

Everything is drawn from one seeded ``numpy`` generator: the same arguments give the same trace.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from .trace_arrays import OP_DELETE, OP_HEAD, OP_READ, OP_WRITE, TraceArrays, write_csv

MODELS = ("home-heavy", "uniform", "follow-the-sun")
DAY = 86400.0
MB = 2 ** 20
READ_BUCKETS = [("per_obj_num_reads_eq_0", 0, 0), ("per_obj_num_reads_eq_1", 1, 1),
                ("per_obj_num_reads_2_10", 2, 10), ("per_obj_num_reads_10_100", 11, 100),
                ("per_obj_num_reads_100_1K", 101, 1000), ("per_obj_num_reads_1K_10K", 1001, 10_000),
                ("per_obj_num_reads_10K_100K", 10_001, 100_000), ("per_obj_num_reads_100K_1M", 100_001, 10 ** 6),
                ("per_obj_num_reads_above_1M", 10 ** 6 + 1, 10 ** 7)]
SIZE_BUCKETS = [("size_up_1MB", 1, MB), ("size_1MB_10MB", MB, 10 * MB), ("size_10MB_100MB", 10 * MB, 100 * MB),
                ("size_100MB_1GB", 100 * MB, 1024 * MB), ("size_1GB_10GB", 1024 * MB, 10240 * MB),
                ("size_above_10GB", 10240 * MB, 102400 * MB)]
GAP_BUCKETS = [("per_obj_avg_time_diff_less_1sec", 0.01, 1.0), ("per_obj_avg_time_diff_1sec_1m", 1.0, 60.0),
               ("per_obj_avg_time_diff_1m_1h", 60.0, 3600.0), ("per_obj_avg_time_diff_1h_24h", 3600.0, DAY),
               ("per_obj_avg_time_diff_above_24h", DAY, 30 * DAY)]
HOME_SHARE = 0.7
SHIFT_SHARE = 0.8


def load_stats(path: str | Path, part: str) -> dict:
    """One part's row (``name`` column, e.g. ``IBMObjectStoreTrace000Part0``; a unique prefix or suffix will do)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    exact = [r for r in rows if r["name"] == part]
    found = exact or [r for r in rows if part in r["name"]]
    if len(found) != 1:
        names = ", ".join(r["name"] for r in rows[:5])
        raise ValueError(f"part {part!r} matches {len(found)} rows of {path} (names like {names}, ...)")
    return {k: (v if k == "name" else float(v or 0)) for k, v in found[0].items()}


def _shares(stats: dict, names: Sequence[str]) -> np.ndarray:
    counts = np.array([stats.get(n, 0.0) for n in names])
    if counts.sum() <= 0:
        raise ValueError(f"part {stats['name']} has no counts in {', '.join(names)}")
    return counts / counts.sum()


def _log_uniform(rng, lo, hi, n=None):
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n))


def _sizes(stats: dict, n: int, rng) -> np.ndarray:
    """Piecewise log-uniform through the bucket edges and the median."""
    objects = stats["uniq_obj"] or 1.0
    zero = min(1.0, stats.get("zero_size", 0.0) / objects)
    shares = _shares(stats, [b[0] for b in SIZE_BUCKETS]) * (1 - zero)
    edges = [float(SIZE_BUCKETS[0][1])] + [float(b[2]) for b in SIZE_BUCKETS]
    cdf = np.r_[zero, zero + np.cumsum(shares)]
    median = stats.get("median_size", 0.0)
    if median > edges[0] and zero < 0.5:
        i = int(np.searchsorted(edges, median))
        if 0 < i < len(edges) and edges[i] != median:
            edges.insert(i, median)
            cdf = np.insert(cdf, i, 0.5)
            cdf = np.maximum.accumulate(cdf)
    u = rng.uniform(0, 1, n)
    j = np.clip(np.searchsorted(cdf, u, side="right") - 1, 0, len(edges) - 2)
    width = np.maximum(cdf[j + 1] - cdf[j], 1e-12)
    frac = np.clip((u - cdf[j]) / width, 0, 1)
    lo, hi = np.log(np.array(edges)[j]), np.log(np.array(edges)[j + 1])
    size = np.exp(lo + frac * (hi - lo)).astype(np.int64)
    return np.where(u < zero, 0, np.maximum(size, 1))


def _regions(model: str, home: np.ndarray, times: np.ndarray, n_regions: int, rng) -> np.ndarray:
    n = len(home)
    anyone = rng.integers(0, n_regions, n)
    if model == "uniform":
        return anyone
    if model == "home-heavy":
        other = (home + 1 + rng.integers(0, max(1, n_regions - 1), n)) % n_regions if n_regions > 1 else home
        return np.where(rng.uniform(0, 1, n) < HOME_SHARE, home, other)
    if model == "follow-the-sun":
        shift = (np.floor((times % DAY) / DAY * n_regions)).astype(np.int64) % n_regions
        return np.where(rng.uniform(0, 1, n) < SHIFT_SHARE, shift, anyone)
    raise ValueError(f"unknown region model {model!r}; choose one of: {', '.join(MODELS)}")


def synthesize(stats: dict, regions: Sequence[str], days: float, model: str = "home-heavy", seed: int = 0,
               objects: int | None = None) -> TraceArrays:
    """A trace following ``stats`` (a ``load_stats`` row) over ``regions`` for ``days`` days."""
    if model not in MODELS:
        raise ValueError(f"unknown region model {model!r}; choose one of: {', '.join(MODELS)}")
    if not days > 0:
        raise ValueError(f"--days must be > 0, got {days}")
    rng = np.random.default_rng(seed)
    span = days * DAY
    n_obj = int(objects or stats["uniq_obj"])
    n_reg = len(regions)

    # reads per object, and their mean gap (hot objects get the short gaps: they must fit the span)
    shares = _shares(stats, [b[0] for b in READ_BUCKETS])
    bucket = rng.choice(len(READ_BUCKETS), n_obj, p=shares)
    lo = np.array([b[1] for b in READ_BUCKETS])[bucket]
    hi = np.array([b[2] for b in READ_BUCKETS])[bucket]
    low = np.maximum(lo, 1)
    reads = np.clip(np.floor(_log_uniform(rng, low, hi + 1, n_obj)), low, np.maximum(hi, 1)).astype(np.int64)
    reads[hi == 0] = 0
    multi = np.flatnonzero(reads >= 2)
    gap_shares = _shares(stats, [b[0] for b in GAP_BUCKETS]) if any(
        stats.get(b[0], 0) for b in GAP_BUCKETS) else np.full(len(GAP_BUCKETS), 1 / len(GAP_BUCKETS))
    gap_bucket = np.sort(rng.choice(len(GAP_BUCKETS), len(multi), p=gap_shares))
    by_heat = multi[np.argsort(-(np.log(reads[multi]) + rng.normal(0, 0.5, len(multi))), kind="stable")]
    mean_gap = np.zeros(n_obj)
    g_lo = np.array([b[1] for b in GAP_BUCKETS])[gap_bucket]
    g_hi = np.array([b[2] for b in GAP_BUCKETS])[gap_bucket]
    fit = 0.95 * span / (reads[by_heat] - 1)
    mean_gap[by_heat] = np.minimum(_log_uniform(rng, g_lo, g_hi), fit)

    # read times: a start, then exponential gaps scaled to the object's mean gap
    owner = np.repeat(np.arange(n_obj), reads)
    total = len(owner)
    first_of = np.cumsum(reads) - reads
    step = rng.exponential(1.0, total)
    step[first_of[reads > 0]] = 0.0
    sums = np.add.reduceat(step, first_of[reads > 0]) if total else np.zeros(0)
    scale = np.zeros(n_obj)
    has = reads > 0
    scale[has] = np.where(sums > 0, mean_gap[has] * (reads[has] - 1) / np.maximum(sums, 1e-300), 0.0)
    offsets = np.cumsum(step * scale[owner])
    base_off = offsets[first_of[has]]
    offsets -= np.repeat(base_off, reads[has])
    length = np.zeros(n_obj)
    length[has] = np.add.reduceat(step * scale[owner], first_of[has]) if total else 0.0
    start = rng.uniform(0, 1, n_obj) * np.maximum(span - length, 0.0)
    read_t = start[owner] + offsets
    first_read = np.full(n_obj, np.inf)
    last_read = np.full(n_obj, -np.inf)
    first_read[has] = read_t[first_of[has]]
    last_read[has] = read_t[first_of[has] + reads[has] - 1]

    # the op mix, relative to the reads drawn
    pct = {k: stats.get(k, 0.0) for k in ("%reads/tot_req", "%writes/tot_req", "%heads/tot_req",
                                            "%copys/tot_req", "%delete/tot_req")}
    per_read = total / pct["%reads/tot_req"] if pct["%reads/tot_req"] > 0 else 0.0
    n_writes = int(round(per_read * (pct["%writes/tot_req"] + pct["%copys/tot_req"])))
    n_heads = int(round(per_read * pct["%heads/tot_req"]))
    n_deletes = int(round(per_read * pct["%delete/tot_req"]))

    # writes: never-read objects are created in the trace; then read objects (before their first read); the
    # rest overwrite; objects read but not created here exist from time 0
    home = rng.integers(0, n_reg, n_obj)
    never = np.flatnonzero(~has)
    read_objs = rng.permutation(np.flatnonzero(has))
    created_read = read_objs[:max(0, min(len(read_objs), n_writes - len(never)))]
    w_obj = [never, created_read, np.flatnonzero(has)[~np.isin(np.flatnonzero(has), created_read)]]
    w_t = [rng.uniform(0, span, len(never)), rng.uniform(0, 1, len(created_read)) * first_read[created_read],
           np.zeros(len(w_obj[2]))]
    extra = max(0, n_writes - len(never) - len(created_read))
    if extra:
        o = rng.integers(0, n_obj, extra)
        w_obj.append(o)
        w_t.append(rng.uniform(0, span, extra))
    w_obj, w_t = np.concatenate(w_obj), np.concatenate(w_t)
    created = np.zeros(n_obj)
    created[w_obj[:len(never) + len(created_read)]] = w_t[:len(never) + len(created_read)]
    # overwrites of an object not yet created become its creation
    order = np.lexsort((w_t, w_obj))
    first_w = np.r_[True, w_obj[order][1:] != w_obj[order][:-1]]
    created[w_obj[order][first_w]] = np.minimum(created[w_obj[order][first_w]], w_t[order][first_w])

    # deletes after an object's last event; HEADs on objects in proportion to their reads + 1
    d_obj = rng.choice(n_obj, min(n_deletes, n_obj), replace=False) if n_deletes else np.zeros(0, np.int64)
    last_event = np.maximum(np.maximum(last_read, created), 0.0)
    if len(w_obj):
        np.maximum.at(last_event, w_obj, w_t)
    d_t = last_event[d_obj] + rng.uniform(0, 1, len(d_obj)) * (span - last_event[d_obj])
    weight = (reads + 1.0) / (reads + 1.0).sum()
    h_obj = rng.choice(n_obj, n_heads, p=weight) if n_heads else np.zeros(0, np.int64)
    dead = np.full(n_obj, span)
    dead[d_obj] = d_t
    h_t = created[h_obj] + rng.uniform(0, 1, n_heads) * (dead[h_obj] - created[h_obj])

    size = _sizes(stats, n_obj, rng)
    times = np.concatenate([w_t, read_t, d_t, h_t])
    ops = np.concatenate([np.full(len(w_t), OP_WRITE), np.full(total, OP_READ), np.full(len(d_t), OP_DELETE),
                          np.full(n_heads, OP_HEAD)]).astype(np.int8)
    objs = np.concatenate([w_obj, owner, d_obj, h_obj]).astype(np.int64)
    rank = np.concatenate([np.zeros(len(w_t)), np.ones(total), np.full(len(d_t), 2), np.ones(n_heads)])
    order = np.lexsort((rank, times))  # at equal times: writes, then reads, then deletes
    times, ops, objs = times[order], ops[order], objs[order]
    who = (ops == OP_READ) | (ops == OP_HEAD)  # placed by the region model; writes and deletes at the home
    region = home[objs].copy()
    region[who] = _regions(model, home[objs[who]], times[who], n_reg, rng)
    # dense key ids in order of first appearance
    _, first_idx, inverse = np.unique(objs, return_index=True, return_inverse=True)
    relabel = np.argsort(np.argsort(first_idx))
    return TraceArrays(times, ops, region.astype(np.int16), relabel[inverse].astype(np.int64), size[objs],
                       list(regions), len(first_idx))


def check(trace: TraceArrays, stats: dict) -> dict:
    """Each matched statistic: the part's value and the generated trace's."""
    op, key, t = trace.op, trace.key, trace.time
    in_trace = ~((op == OP_WRITE) & (t == 0.0))  # writes at time 0 only set up objects that exist before
    counts = np.bincount(op[in_trace], minlength=4)
    total = counts.sum()
    target_mix = np.array([stats["%writes/tot_req"] + stats["%copys/tot_req"], stats["%reads/tot_req"],
                           stats["%delete/tot_req"], stats["%heads/tot_req"]]) / 100
    n_obj = trace.n_keys
    reads = np.bincount(key[op == OP_READ], minlength=n_obj)
    read_buckets = np.array([np.count_nonzero((reads >= lo) & (reads <= hi)) for _, lo, hi in READ_BUCKETS])
    sizes = np.zeros(n_obj, np.int64)
    sizes[key] = trace.size
    size_edges = [0] + [b[2] for b in SIZE_BUCKETS]
    size_buckets = np.array([np.count_nonzero((sizes > 0) & (sizes >= lo) & (sizes < hi))
                             for lo, hi in zip(size_edges[:-1], size_edges[1:])])
    rk, rt = key[op == OP_READ], t[op == OP_READ]
    o = np.lexsort((rt, rk))
    same = rk[o][1:] == rk[o][:-1]
    gaps = np.diff(rt[o])[same]
    owner = rk[o][1:][same]
    mean_gap = np.bincount(owner, gaps, minlength=n_obj) / np.maximum(np.bincount(owner, minlength=n_obj), 1)
    multi = reads >= 2
    gap_edges = [0.0] + [b[2] for b in GAP_BUCKETS[:-1]] + [np.inf]
    gap_buckets = np.array([np.count_nonzero(multi & (mean_gap >= lo) & (mean_gap < hi))
                            for lo, hi in zip(gap_edges[:-1], gap_edges[1:])])

    def pair(target, got):
        return {"target": np.round(target, 4).tolist(), "generated": np.round(got, 4).tolist()}

    return {
        "op mix (write, read, delete, head)": pair(target_mix, counts / max(total, 1)),
        "read-count buckets (0, 1, 2-10, ...)": pair(_shares(stats, [b[0] for b in READ_BUCKETS]),
                                                     read_buckets / max(n_obj, 1)),
        "single-read share": pair(stats["%get_once/obj"] / 100 if stats.get("uniq_obj") else 0.0,
                                  read_buckets[1] / max(n_obj, 1)),
        "size: zero share": pair(stats.get("zero_size", 0) / max(stats["uniq_obj"], 1),
                                 np.count_nonzero(sizes == 0) / max(n_obj, 1)),
        "size buckets (<1MB, ..., >10GB) of non-empty": pair(_shares(stats, [b[0] for b in SIZE_BUCKETS]),
                                                              size_buckets / max(size_buckets.sum(), 1)),
        "median size (bytes)": pair(stats["median_size"], float(np.median(sizes)) if n_obj else 0.0),
        "mean-gap buckets (<1s, <1m, <1h, <24h, more) of re-read objects": pair(
            _shares(stats, [b[0] for b in GAP_BUCKETS]) if any(stats.get(b[0], 0) for b in GAP_BUCKETS)
            else np.zeros(len(GAP_BUCKETS)), gap_buckets / max(gap_buckets.sum(), 1)),
        "not fitted: mean size (bytes)": pair(stats["avg_size"], float(sizes.mean()) if n_obj else 0.0),
    }


def simple_trace(regions: Sequence[str], ops: int = 200_000, objects: int = 20_000, days: float = 2.0,
                 read_share: float = 0.8, min_size: int = 1000, max_size: int = 8_000_000,
                 seed: int = 0) -> TraceArrays:
    """The issue's plain synthetic case: each object written once at a uniform time, then ops spread uniformly
    over the objects and the span: ``read_share`` reads, the rest overwrites; every op from a uniform region;
    sizes log-uniform in [min_size, max_size]."""
    rng = np.random.default_rng(seed)
    span = days * DAY
    n_reg = len(regions)
    created = rng.uniform(0, span, objects) * rng.uniform(0, 1, objects)  # most objects exist early
    rest = ops - objects
    obj = rng.integers(0, objects, rest)
    t = created[obj] + rng.uniform(0, 1, rest) * (span - created[obj])
    op = np.where(rng.uniform(0, 1, rest) < read_share * ops / rest, OP_READ, OP_WRITE)
    times = np.r_[created, t]
    ops_ = np.r_[np.full(objects, OP_WRITE), op].astype(np.int8)
    keys = np.r_[np.arange(objects), obj].astype(np.int64)
    order = np.argsort(times, kind="stable")
    size = np.exp(rng.uniform(np.log(min_size), np.log(max_size), objects)).astype(np.int64)
    region = rng.integers(0, n_reg, len(times)).astype(np.int16)
    return TraceArrays(times[order], ops_[order], region[order], keys[order], size[keys[order]], list(regions),
                       objects)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="skystore trace synth",
                                 description="Write a multi-region trace that follows one IBM trace part's "
                                             "statistics (CSV: time,op,region,key,size); the matched statistics "
                                             "and their values on the output go to stderr as JSON.")
    ap.add_argument("--stats", required=True, help="ibm_trace_stats.csv")
    ap.add_argument("--part", required=True, help="the part's name (e.g. IBMObjectStoreTrace000Part0)")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--regions", type=int, default=3, help="the first N regions of the built-in mix (default 3)")
    where.add_argument("--region-list", help="comma-separated regions")
    ap.add_argument("--days", type=float, default=7.0)
    ap.add_argument("--model", choices=MODELS, default="home-heavy", help="which region issues each read")
    ap.add_argument("--objects", type=int, help="objects to draw (default: the part's unique objects)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="the CSV to write")
    return ap


def main(argv: list[str] | None = None) -> int:
    from .region_names import cloud_identity
    from .simulator import region_set

    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        stats = load_stats(args.stats, args.part)
        regions = ([cloud_identity(r.strip()) for r in args.region_list.split(",") if r.strip()]
                   if args.region_list else region_set(args.regions))
        trace = synthesize(stats, regions, args.days, args.model, args.seed, args.objects)
        write_csv(trace, args.out)
    except (OSError, ValueError) as e:
        print(f"skystore trace synth: error: {e}", file=sys.stderr)
        return 2
    report = {"part": stats["name"], "out": args.out, "regions": regions, "model": args.model, "seed": args.seed,
              **trace.counts(), "statistics": check(trace, stats)}
    print(json.dumps(report, indent=2), file=sys.stderr)
    return 0

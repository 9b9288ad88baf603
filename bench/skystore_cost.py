"""SkyStore placement cost: the learned TTL against the baselines and the clairvoyant optimum, on week-long
generated traces, the issue's plain synthetic trace and the shipped traces; and the simulator's speed.

What it measures
  generated  week-long traces drawn by skystore_connector/synth.py from the published statistics of IBM Cloud
             Object Storage trace parts (op mix, reads per object, sizes, re-read gaps), for several parts x
             region models (home-heavy, uniform, follow-the-sun), over 3 regions (aws:us-east-1, aws:eu-west-1,
             gcp:us-central1), shipped prices. Objects per trace are scaled so each has about 500,000 reads.
  synthetic  the issue's case: 200,000 operations over 2 days, 20,000 objects of 1 kB-8 MB, 80% reads,
             3 regions (synth.simple_trace).
  shipped    the IBM sample (spread over the regions) and the multi-region sample, time scale x1 and --scale
             (default 10,000: gaps of seconds become days, the range of T_even).
  Per trace, the total cost ($: storage + egress + GET/PUT requests) of: learned TTL, T_even TTL, always-store,
  always-evict, replicate-all (a copy in every region at each write, like an AWS multi-region bucket), static
  (SPANStore-style: per object the cheapest fixed set of regions, chosen offline knowing the whole trace) and
  the clairvoyant TTL optimum (keep a copy until the next read from that region iff the gap is under T_even).
  Aims (the issue's): learned <= 1.3x the optimum everywhere; learned <= the best trivial policy (always-store,
  always-evict, replicate-all, T_even) everywhere; the worst baseline >= 3x learned on most generated traces.
  speed      operations per second per policy (reads, writes, deletes; HEADs left out), CPU time of this process
             (one core): the fast simulator (best of two runs) on a generated week of about 1.4 million
             operations (IBM part 076, 40,000 objects), the event-by-event simulator (the old one) on 1,000
             objects of the same (about 35,000 operations).

Run time: the default run takes about 1-2 minutes on 2 cores (8 generated traces of about 0.5M reads, 7
replays each, then the speed check); --quick about 10 s (2 small generated traces of 1 day, the synthetic case,
the shipped traces at one spread, a small speed check).

Usage: python bench/skystore_cost.py [--quick] [--out bench/results] [--data ../shared/data/skystore] [--scale 10000]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (str(REPO), str(REPO / "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)

from _common import DEFAULT_OUT, log, print_table, pyplot, save_png, write_json  # noqa: E402
from skystore_connector.fastsim import replay_fast  # noqa: E402
from skystore_connector.policy import make_policy  # noqa: E402
from skystore_connector.pricing import Prices  # noqa: E402
from skystore_connector.simulator import (ClairvoyantPolicy, load_events, region_set, replay,  # noqa: E402
                                          simulate)
from skystore_connector.static_placement import static_placement  # noqa: E402
from skystore_connector.synth import READ_BUCKETS, load_stats, simple_trace, synthesize  # noqa: E402
from skystore_connector.trace_arrays import OP_HEAD, TraceArrays  # noqa: E402

NAME = "skystore_cost"
POLICIES = ("learned", "t_even", "always-store", "always-evict", "replicate-all")
TRIVIAL = ("t_even", "always-store", "always-evict", "replicate-all")
BASELINES = TRIVIAL + ("static",)
# (part, region model): small and large objects, hot and cold, short and day-long re-read gaps, HEAD-heavy
GENERATED = [("IBMObjectStoreTrace012Part0", "home-heavy"), ("IBMObjectStoreTrace012Part0", "follow-the-sun"),
             ("IBMObjectStoreTrace043Part0", "uniform"), ("IBMObjectStoreTrace043Part0", "home-heavy"),
             ("IBMObjectStoreTrace076Part0", "follow-the-sun"), ("IBMObjectStoreTrace076Part0", "uniform"),
             ("IBMObjectStoreTrace062Part0", "follow-the-sun"), ("IBMObjectStoreTrace000Part0", "home-heavy")]
SPEED_PART = "IBMObjectStoreTrace076Part0"
QUICK_GENERATED = [("IBMObjectStoreTrace043Part0", "uniform"), ("IBMObjectStoreTrace076Part0", "follow-the-sun")]
SHIPPED = {"ibm": ("ibm_trace_sample.ssv", ("one", "all", "random")),
           "multiregion": ("multiregion_trace_small.csv", (None,))}
AIMS = {"learned_vs_optimum": 1.3, "learned_vs_best_trivial": 1.0, "worst_baseline_vs_learned": 3.0}


def objects_for(stats: dict, reads: int) -> int:
    """Objects giving about ``reads`` reads (from the part's reads-per-object buckets), 1,000 to 20,000."""
    mids = [(lo + hi) / 2 for _, lo, hi in READ_BUCKETS]
    counts = [stats[name] for name, _, _ in READ_BUCKETS]
    per_object = sum(m * c for m, c in zip(mids, counts)) / max(sum(counts), 1)
    return int(min(20_000, max(1_000, reads / max(per_object, 1e-9))))


def costs(trace: TraceArrays, prices: Prices) -> dict:
    result = simulate(trace, POLICIES, prices, trace.regions)
    totals = {name: r["total"] for name, r in result["policies"].items()}
    totals["static"] = static_placement(trace, prices).total
    totals["optimum"] = result["optimum"]["total"]
    learned, optimum = totals["learned"], totals["optimum"]
    best_trivial = min(totals[p] for p in TRIVIAL)
    worst = max(totals[p] for p in BASELINES)
    ratios = {"learned_vs_optimum": learned / optimum, "learned_vs_best_trivial": learned / best_trivial,
              "worst_baseline_vs_learned": worst / learned, "static_vs_optimum": totals["static"] / optimum}
    return {**trace.counts(), "totals": totals, "ratios": ratios,
            "best_trivial": min(TRIVIAL, key=lambda p: totals[p]), "worst_baseline": max(BASELINES, key=totals.get),
            "aims_met": {k: ratios[k] <= v if k != "worst_baseline_vs_learned" else ratios[k] >= v
                         for k, v in AIMS.items()},
            "breakdown": {**result["policies"], "optimum": result["optimum"]}}


def without_heads(trace: TraceArrays) -> TraceArrays:
    """HEADs are answered from metadata and skipped by the simulator: counting them would flatter its speed."""
    keep = trace.op != OP_HEAD
    return TraceArrays(trace.time[keep], trace.op[keep], trace.region[keep], trace.key[keep], trace.size[keep],
                       trace.regions, trace.n_keys)


def speed(trace: TraceArrays, small: TraceArrays, prices: Prices) -> dict:
    """Operations per second (CPU time) per policy: the fast simulator on ``trace``, the event replay on
    ``small`` (the same kind of trace, fewer objects: a prefix would be mostly the set-up writes at time 0)."""
    regions, clouds = trace.regions, {r: r for r in trace.regions}
    prefix = small.to_events()
    out = {}
    for spec in (*POLICIES, "optimum"):
        def policy(events=None):
            return ClairvoyantPolicy(events, prices, clouds) if spec == "optimum" else make_policy(spec, prices,
                                                                                                   clouds)
        seconds = []
        for _ in range(2):  # the best of two: the machine is shared
            t0 = time.process_time()
            replay_fast(trace, policy(), prices, clouds, regions)
            seconds.append(time.process_time() - t0)
        fast = len(trace) / min(seconds)
        t0 = time.process_time()
        replay(prefix, policy(prefix), prices, clouds, regions)
        slow = len(prefix) / (time.process_time() - t0)
        out[spec] = {"fast_ops_per_s": fast, "events_ops_per_s": slow, "speedup": fast / slow}
        log(f"speed {spec}: fast {fast / 1e6:.2f} M ops/s, event replay {slow / 1e3:.1f} k ops/s")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "skystore"))
    ap.add_argument("--scale", type=float, default=10_000.0, help="the stretched time scale of the shipped traces")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="2 small generated traces of 1 day; 1 spread of the IBM "
                                                         "sample; a smaller speed check")
    args = ap.parse_args()
    data = Path(args.data)
    needed = [f for f, _ in SHIPPED.values()] + ["egress_cost.csv", "storage_pricing.csv", "ibm_trace_stats.csv"]
    missing = [f for f in needed if not (data / f).is_file()]
    if missing:
        print(f"shared data missing in {data}: {missing} (see ../shared/data/README.md)", file=sys.stderr)
        return 1
    prices = Prices.load(data)
    regions = region_set(3)
    configs, traces = {}, {}
    for part, model in (QUICK_GENERATED if args.quick else GENERATED):
        stats = load_stats(data / "ibm_trace_stats.csv", part)
        objects = 1_000 if args.quick else objects_for(stats, 500_000)
        label = f"{part.replace('IBMObjectStoreTrace', 'ibm')}/{model}"
        trace = synthesize(stats, regions, 1 if args.quick else 7, model, args.seed, objects)
        traces[label] = trace
        configs[label] = {"kind": "generated", "part": part, "model": model, "days": 1 if args.quick else 7,
                          **costs(trace, prices)}
        log(label, {k: round(v, 3) for k, v in configs[label]["ratios"].items()})
    trace = simple_trace(regions, seed=args.seed)
    configs["synthetic"] = {"kind": "synthetic", **costs(trace, prices)}
    log("synthetic", {k: round(v, 3) for k, v in configs["synthetic"]["ratios"].items()})
    for name, (filename, spreads) in SHIPPED.items():
        for spread in (spreads[:1] if args.quick else spreads):
            for scale in (1.0, args.scale):
                events, names = load_events(data / filename, None, regions, spread, args.seed, scale)
                label = f"{name}" + (f"/{spread}" if spread else "") + f"/x{scale:g}"
                configs[label] = {"kind": "shipped", "time_scale": scale,
                                  **costs(TraceArrays.from_events(events, names), prices)}
                log(label, {k: round(v, 3) for k, v in configs[label]["ratios"].items()})
    # the speed figure: a generated week of about 1.4 million operations (HEADs left out), and 1,000 objects
    # of the same part (about 35,000) for the event-by-event replay
    stats = load_stats(data / "ibm_trace_stats.csv", SPEED_PART)
    largest = without_heads(synthesize(stats, regions, 7, "uniform", args.seed, 2_000 if args.quick else 40_000))
    small = without_heads(synthesize(stats, regions, 7, "uniform", args.seed, 100 if args.quick else 1_000))
    speeds = speed(largest, small, prices)

    generated = [c for c in configs.values() if c["kind"] == "generated"]
    summary = {
        "learned_within_1.3x_optimum": all(c["aims_met"]["learned_vs_optimum"] for c in configs.values()),
        "learned_at_most_best_trivial": all(c["aims_met"]["learned_vs_best_trivial"] for c in configs.values()),
        "generated_with_worst_baseline_3x_learned": sum(c["aims_met"]["worst_baseline_vs_learned"]
                                                        for c in generated),
        "generated_traces": len(generated),
        "synthetic_learned_vs_always_store": configs["synthetic"]["totals"]["learned"]
        / configs["synthetic"]["totals"]["always-store"]}
    report = {"quick": args.quick, "prices": str(data), "seed": args.seed, "regions": regions,
              "policies": [*POLICIES, "static", "optimum"], "aims": AIMS, "summary": summary,
              "speed": {"trace_ops": len(largest), "event_replay_ops": len(small), **speeds}, "configs": configs}
    write_json(report, args.out, NAME)
    columns = [*POLICIES, "static", "optimum"]
    print_table(["trace", "ops", *columns], [[label, c["events"], *(c["totals"][p] for p in columns)]
                                            for label, c in configs.items()], title="total cost ($)")
    print_table(["trace", "learned/opt", "learned/best trivial", "best trivial", "worst/learned", "worst",
                 "static/opt", "aims met"],
                [[label, c["ratios"]["learned_vs_optimum"], c["ratios"]["learned_vs_best_trivial"],
                  c["best_trivial"], c["ratios"]["worst_baseline_vs_learned"], c["worst_baseline"],
                  c["ratios"]["static_vs_optimum"], "/".join("y" if ok else "n" for ok in c["aims_met"].values())]
                 for label, c in configs.items()],
                title="ratios (aims: learned/opt <= 1.3, learned/best trivial <= 1, worst baseline/learned >= 3; "
                      "'aims met' in that order)")
    print_table(["policy", "fast M ops/s", "event replay k ops/s", "speedup"],
                [[p, s["fast_ops_per_s"] / 1e6, s["events_ops_per_s"] / 1e3, s["speedup"]]
                 for p, s in speeds.items()],
                title=f"simulator speed (CPU time, one core; {len(largest):,} ops, no HEADs)")
    print(f"\nsummary: {summary}")
    plot(configs, args.scale, args.out)
    return 0


def plot(configs: dict, scale: float, out: str) -> None:
    """Cost per policy relative to the optimum, one group of bars per trace (shipped traces at ``scale`` only;
    log scale: always-evict and replicate-all can be many times the rest)."""
    plt = pyplot()
    shown = {label: c for label, c in configs.items() if c["kind"] != "shipped" or label.endswith(f"x{scale:g}")}
    columns = [*POLICIES, "static"]
    fig, ax = plt.subplots(figsize=(max(8.0, 1.3 * len(shown)), 4.5))
    width = 0.8 / len(columns)
    for i, p in enumerate(columns):
        xs = [j + (i - (len(columns) - 1) / 2) * width for j in range(len(shown))]
        ax.bar(xs, [c["totals"][p] / c["totals"]["optimum"] for c in shown.values()], width, label=p)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(1.3, color="grey", linewidth=0.8, linestyle="--")
    ax.set_yscale("log")
    ax.set_xticks(range(len(shown)), list(shown), rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("total cost / clairvoyant optimum")
    ax.set_title("SkyStore placement cost per policy (dashed: 1.3x the optimum)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=len(columns), fontsize=8)
    save_png(fig, NAME, out)


if __name__ == "__main__":
    sys.exit(main())

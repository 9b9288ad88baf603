"""SkyStore placement cost: TTL policies vs baselines vs the clairvoyant optimum on the shipped traces.

What it measures
  The simulator (skystore_connector/simulator.py) replays
    ibm          the IBM COS trace sample (single region, spread over the regions: each object written in one
                 region and read from one other region, from all in turn, or at random; seeded);
    multiregion  the multi-region trace (its AWS regions mapped round-robin onto the chosen set);
  over 3 and 6 regions (aws:us-east-1, aws:eu-west-1, gcp:us-central1 [+ azure:eastus, gcp:europe-west1,
  aws:ap-northeast-1]) with the shipped prices, at two time scales: 1 (as recorded: the traces span minutes,
  every TTL outlives them, so storage hardly matters) and --scale (default 10,000: gaps of seconds to minutes
  become hours to weeks, the range of T_even, which is 26 to 137 days between these regions).
  Per configuration: the total cost ($: storage + egress + GET/PUT requests) of learned TTL, T_even TTL,
  always-store, always-evict and replicate-all, the clairvoyant optimum (keep a copy until the next read from
  that region iff the gap is shorter than T_even), and the ratios the issue aims at: learned / optimum <= 1.3,
  learned / always-store <= 0.5, learned / replicate-all <= 1/3.

  The opt/always-store and opt/replicate-all columns show the best any policy could do against those baselines.

Usage: python bench/skystore_cost.py [--quick] [--out bench/results] [--data ../shared/data/skystore] [--scale 10000]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (str(REPO), str(REPO / "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)

from _common import DEFAULT_OUT, log, print_table, save_bar_chart, write_json  # noqa: E402
from skystore_connector.pricing import Prices  # noqa: E402
from skystore_connector.simulator import load_events, region_set, simulate, trace_summary  # noqa: E402

NAME = "skystore_cost"
POLICIES = ("learned", "t_even", "always-store", "always-evict", "replicate-all")
TRACES = {"ibm": ("ibm_trace_sample.ssv", ("one", "all", "random")), "multiregion": ("multiregion_trace_small.csv",
                                                                                      (None,))}
AIMS = {"learned_vs_optimum": 1.3, "learned_vs_always_store": 0.5, "learned_vs_replicate_all": 1 / 3}


def run_config(path: Path, n_regions: int, spread: str | None, scale: float, prices: Prices, seed: int) -> dict:
    events, regions = load_events(path, None, region_set(n_regions), spread, seed, scale)
    result = simulate(events, POLICIES, prices, regions)
    totals = {name: r["total"] for name, r in result["policies"].items()}
    optimum = result["optimum"]["total"]
    learned = totals["learned"]
    ratios = {"learned_vs_optimum": learned / optimum, "t_even_vs_optimum": totals["t_even"] / optimum,
              "learned_vs_always_store": learned / totals["always-store"],
              "learned_vs_replicate_all": learned / totals["replicate-all"],
              # the best any policy could reach against the same baselines (the aims' ceiling on this trace)
              "optimum_vs_always_store": optimum / totals["always-store"],
              "optimum_vs_replicate_all": optimum / totals["replicate-all"]}
    return {"regions": regions, "spread": spread, "time_scale": scale, **trace_summary(events),
            "totals": {**totals, "optimum": optimum}, "ratios": ratios,
            "aims_met": {k: ratios[k] <= v for k, v in AIMS.items()},
            "breakdown": {**result["policies"], "optimum": result["optimum"]}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "skystore"))
    ap.add_argument("--scale", type=float, default=10_000.0, help="the stretched time scale (besides 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="only the 'one' spread of the IBM trace (all of it is fast)")
    args = ap.parse_args()
    data = Path(args.data)
    needed = [f for f, _ in TRACES.values()] + ["egress_cost.csv", "storage_pricing.csv"]
    missing = [f for f in needed if not (data / f).is_file()]
    if missing:
        print(f"shared data missing in {data}: {missing} (see ../shared/data/README.md)", file=sys.stderr)
        return 1
    prices = Prices.load(data)
    configs = {}
    for trace, (filename, spreads) in TRACES.items():
        for n in (3, 6):
            for spread in (spreads[:1] if args.quick else spreads):
                for scale in (1.0, args.scale):
                    label = f"{trace}/{n}r" + (f"/{spread}" if spread else "") + f"/x{scale:g}"
                    configs[label] = run_config(data / filename, n, spread, scale, prices, args.seed)
                    log(label, {k: round(v, 3) for k, v in configs[label]["ratios"].items()})

    report = {"quick": args.quick, "prices": str(data), "seed": args.seed, "policies": list(POLICIES), "aims": AIMS,
              "configs": configs}
    write_json(report, args.out, NAME)
    print_table(["config", "optimum $", *POLICIES],
                [[label, c["totals"]["optimum"], *(c["totals"][p] for p in POLICIES)] for label, c in configs.items()],
                title="total cost ($)")
    print_table(["config", "learned/opt", "t_even/opt", "learned/always-store", "learned/replicate-all",
                 "opt/always-store", "opt/replicate-all", "aims met"],
                [[label, *(c["ratios"][k] for k in ("learned_vs_optimum", "t_even_vs_optimum",
                                                     "learned_vs_always_store", "learned_vs_replicate_all",
                                                     "optimum_vs_always_store", "optimum_vs_replicate_all")),
                  "/".join("y" if ok else "n" for ok in c["aims_met"].values())] for label, c in configs.items()],
                title="ratios (aims: learned/opt <= 1.3, learned/always-store <= 0.5, learned/replicate-all <= 0.33;"
                      " 'aims met' in that order)")
    scaled = {label: c for label, c in configs.items() if c["time_scale"] != 1.0}
    save_bar_chart({label.rsplit("/x", 1)[0]: {p: c["totals"][p] / c["totals"]["optimum"]
                                               for p in (*POLICIES, "optimum") if p != "always-evict"}
                    for label, c in scaled.items()}, "total cost / clairvoyant optimum",
                   f"SkyStore placement cost at time scale x{args.scale:g} (always-evict off the chart)",
                   args.out, NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())

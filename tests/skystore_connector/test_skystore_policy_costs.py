"""The learned TTL against the trivial policies and the clairvoyant optimum on whole traces (the issue's aims):
never more than the best of always-store, always-evict, replicate-all and T_even, at most 1.3x the optimum."""
from __future__ import annotations

from pathlib import Path

import pytest

from skystore_connector.pricing import Prices
from skystore_connector.simulator import region_set, simulate
from skystore_connector.synth import load_stats, simple_trace, synthesize

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "skystore"
pytestmark = pytest.mark.skipif(not (SHARED / "ibm_trace_stats.csv").is_file(),
                                reason=f"shared prices and IBM statistics not found in {SHARED}")
TRIVIAL = ("always-store", "always-evict", "replicate-all", "t_even")


def totals(trace) -> dict:
    result = simulate(trace, ("learned", *TRIVIAL), Prices.load(SHARED))
    return {**{k: v["total"] for k, v in result["policies"].items()}, "optimum": result["optimum"]["total"]}


def test_issue_synthetic_case():
    """200,000 operations over two days, 20,000 objects of 1 kB-8 MB, 80% reads, three regions: the learned TTL
    lost to keeping every copy (1.216x against 1.008x the optimum); now it costs less."""
    cost = totals(simple_trace(region_set(3), seed=0))
    assert cost["learned"] <= cost["always-store"]
    assert cost["learned"] <= min(cost[p] for p in TRIVIAL)
    assert cost["learned"] <= 1.3 * cost["optimum"]


@pytest.mark.parametrize("part, model", [("IBMObjectStoreTrace043Part0", "home-heavy"),
                                         ("IBMObjectStoreTrace062Part0", "follow-the-sun")])
def test_generated_week(part, model):
    trace = synthesize(load_stats(SHARED / "ibm_trace_stats.csv", part), region_set(3), 7, model, seed=0,
                       objects=5_000)
    cost = totals(trace)
    assert cost["learned"] <= min(cost[p] for p in TRIVIAL)
    assert cost["learned"] <= 1.3 * cost["optimum"]

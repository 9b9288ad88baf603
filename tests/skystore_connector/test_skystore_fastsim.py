"""The vectorised simulator gives the event-by-event replay's costs: on the shipped traces (the issue's check),
on generated traces with overwrites, deletes and HEADs, across chunk boundaries, for every policy."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from skystore_connector.fastsim import next_read_gaps, replay_fast
from skystore_connector.policy import make_policy
from skystore_connector.pricing import Prices
from skystore_connector.simulator import (ClairvoyantPolicy, Event, load_events, load_trace, region_set, replay,
                                          simulate)
from skystore_connector.synth import load_stats, simple_trace, synthesize
from skystore_connector.trace_arrays import OP_READ, TraceArrays, write_csv

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "skystore"
needs_shared = pytest.mark.skipif(not (SHARED / "ibm_trace_sample.ssv").is_file(),
                                  reason=f"shared traces not found in {SHARED} (see ../shared/data/README.md)")
POLICIES = ("learned", "t_even", "fixed:30", "always-store", "always-evict", "replicate-all", "optimum")


def both(trace: TraceArrays, spec: str, prices: Prices, chunk: int) -> tuple[dict, dict]:
    regions = trace.regions
    clouds = {r: r for r in regions}
    events = trace.to_events()
    if spec == "optimum":
        slow, fast = ClairvoyantPolicy(events, prices, clouds), ClairvoyantPolicy(None, prices, clouds)
    else:
        slow, fast = make_policy(spec, prices, clouds), make_policy(spec, prices, clouds)
    return (replay(events, slow, prices, clouds, regions).as_dict(),
            replay_fast(trace, fast, prices, clouds, regions, chunk=chunk).as_dict())


def assert_same(a: dict, b: dict, what: str) -> None:
    diff = {k: (a[k], b[k]) for k in a if k != "policy"
            and not math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-15)}
    assert not diff, f"{what}: {diff}"


@needs_shared
@pytest.mark.parametrize("trace, regions, spread, scale", [
    ("ibm_trace_sample.ssv", 3, "one", 1.0), ("ibm_trace_sample.ssv", 3, "random", 1e4),
    ("ibm_trace_sample.ssv", 6, "all", 1e4), ("multiregion_trace_small.csv", 3, None, 1.0),
    ("multiregion_trace_small.csv", 6, None, 1e4)])
def test_shipped_traces_cost_the_same(trace, regions, spread, scale):
    prices = Prices.load(SHARED)
    events, names = load_events(SHARED / trace, None, region_set(regions), spread, 0, scale)
    arrays = TraceArrays.from_events(events, names)
    for spec in POLICIES:
        slow, fast = both(arrays, spec, prices, chunk=257)
        assert_same(slow, fast, f"{trace} {regions}r {spread} x{scale:g} {spec}")


@needs_shared
def test_generated_traces_cost_the_same():
    """Overwrites, deletes, HEADs, reads of deleted objects and copies made at writes, in chunks of 1,000."""
    prices = Prices.load(SHARED)
    stats = load_stats(SHARED / "ibm_trace_stats.csv", "IBMObjectStoreTrace012Part0")
    traces = [synthesize(stats, region_set(3), 0.5, "follow-the-sun", seed=1, objects=150),
              simple_trace(region_set(4), ops=6000, objects=500, days=0.5, seed=2)]
    assert (traces[0].op == 2).any() and (traces[0].op == 3).any()  # deletes and HEADs are there
    for trace in traces:
        for spec in POLICIES:
            slow, fast = both(trace, spec, prices, chunk=1000)
            assert_same(slow, fast, f"{trace.counts()} {spec}")


@needs_shared
@pytest.mark.parametrize("regions, scale", [(None, 1.0), (2, 1e4), (6, 3.0)])
def test_column_loader_reads_what_the_event_loader_reads(tmp_path, regions, scale):
    """``load_trace`` reads CSV traces straight into columns (pandas) and maps regions itself: the same trace as
    the event readers plus ``map_regions``, key ids aside (they may be numbered in another order)."""
    generic = tmp_path / "generic.csv"
    write_csv(simple_trace(region_set(4), ops=3000, objects=300, days=0.2, seed=4), generic)
    names = region_set(regions) if regions else None
    for path in (SHARED / "multiregion_trace_small.csv", generic):
        columns, by_columns = load_trace(path, None, names, None, 0, scale)
        events, by_events = load_events(path, None, names, None, 0, scale)
        expected = TraceArrays.from_events(events, by_events)
        assert by_columns == by_events and columns.n_keys == expected.n_keys
        assert np.allclose(columns.time, expected.time, rtol=1e-12, atol=0)
        for name in ("op", "region", "size"):
            assert np.array_equal(getattr(columns, name), getattr(expected, name)), (path.name, name)
        assert len(set(zip(columns.key, expected.key))) == expected.n_keys  # one key id for one key id


def test_hand_made_trace_in_chunks_of_one():
    """Every event its own chunk: all state crosses chunk boundaries."""
    prices = Prices(storage={"a": 2.0, "b": 1.0, "c": 1.5},
                    egress={(s, d): 0.01 * (1 + i + j) for i, s in enumerate("abc") for j, d in enumerate("abc")
                            if s != d},
                    get_request={r: 1e-4 for r in "abc"}, put_request={r: 1e-3 for r in "abc"})
    ev = [Event(0, "write", "a", "k", 10**9), Event(1, "read", "b", "k", 10**9), Event(2, "read", "c", "k", 10**9),
          Event(2, "head", "c", "k", 0), Event(30, "read", "b", "k", 10**9), Event(31, "write", "c", "k", 2 * 10**9),
          Event(40, "read", "a", "k", 2 * 10**9), Event(41, "read", "b", "k", 2 * 10**9),
          Event(50, "delete", "b", "k", 0), Event(51, "read", "b", "k", 0), Event(60, "write", "b", "j", 10**9),
          Event(61, "read", "a", "j", 10**9), Event(70, "read", "c", "j", 10**9)]
    trace = TraceArrays.from_events(ev, ["a", "b", "c"])
    for spec in POLICIES:
        for chunk in (1, 2, 5, 100):
            slow, fast = both(trace, spec, prices, chunk)
            assert_same(slow, fast, f"{spec} chunk {chunk}")
    assert fast["heads"] == 1 and fast["missing_reads"] == 1


def test_next_read_gaps_stop_at_a_new_version():
    ev = [Event(0, "write", "a", "k", 1), Event(1, "read", "b", "k", 1), Event(3, "read", "b", "k", 1),
          Event(4, "write", "a", "k", 1), Event(5, "read", "b", "k", 1), Event(6, "read", "a", "k", 1)]
    gaps = next_read_gaps(TraceArrays.from_events(ev, ["a", "b"]))
    assert gaps.tolist() == [2.0, math.inf, math.inf, math.inf]


def test_simulate_engines_agree_and_state_is_per_object():
    prices = Prices.default()
    trace = simple_trace(["aws:us-east-1", "aws:eu-west-1"], ops=3000, objects=300, days=0.2, seed=5)
    fast = simulate(trace, ["learned", "always-evict"], prices, engine="fast")
    slow = simulate(trace, ["learned", "always-evict"], prices, engine="events")
    for name in ("learned", "always-evict"):
        assert_same(slow["policies"][name], fast["policies"][name], name)
    assert_same(slow["optimum"], fast["optimum"], "optimum")
    assert np.count_nonzero(trace.op == OP_READ) == fast["policies"]["learned"]["reads"]

"""The trace simulator: hand-made traces with costs computed by hand, trace readers, spreading, the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from skystore_connector.policy import make_policy
from skystore_connector.pricing import SECONDS_PER_MONTH, Prices
from skystore_connector.simulator import (Event, clairvoyant, main, map_regions, prepare, read_csv_trace,
                                          read_ibm_trace, read_multiregion_trace, replay, simulate, spread_events)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "skystore"
needs_shared = pytest.mark.skipif(not (SHARED / "ibm_trace_sample.ssv").is_file(),
                                  reason=f"shared traces not found in {SHARED} (see ../shared/data/README.md)")

GB = 10**9
S = 0.001  # storage $/GB-second in both regions; egress a<->b 0.1 $/GB, so T_even = 100 s


def toy_prices(get: float = 0.0, put: float = 0.0) -> Prices:
    return Prices(storage={"a": S * SECONDS_PER_MONTH, "b": S * SECONDS_PER_MONTH},
                  egress={("a", "b"): 0.1, ("b", "a"): 0.1},
                  get_request={"a": get, "b": get}, put_request={"a": put, "b": put})


# written in a at 0; read in b at 10, 50, 300; read in a (base, free) at 400, the end of the trace
TRACE = [Event(0, "write", "a", "k", GB), Event(10, "read", "b", "k", GB), Event(50, "read", "b", "k", GB),
         Event(300, "read", "b", "k", GB), Event(400, "read", "a", "k", GB)]
BASE = 400 * S  # the base copy in a, 0..400 s

# per policy: (storage of replicas, egress), by hand
HAND = {
    # every read in b fetched from a
    "always-evict": (0.0, 3 * 0.1),
    # fetched once at 10, kept until the end
    "always-store": (390 * S, 0.1),
    # TTL 100 s: copy 10..110, hit at 50 extends to 150, expired at 300 (140 s held), fetched again, kept to 400
    "t_even": ((140 + 100) * S, 2 * 0.1),
    # TTL 30 s: copy 10..40 expires before 50; 50..80 expires before 300; 300..330
    "fixed:30": (3 * 30 * S, 3 * 0.1),
    # copied to b at the write, kept to the end; every read a hit
    "replicate-all": (400 * S, 0.1),
}


@pytest.mark.parametrize("spec", sorted(HAND))
def test_hand_made_trace(spec):
    prices = toy_prices()
    report = replay(TRACE, make_policy(spec, prices, {"a": "a", "b": "b"}), prices)
    storage, egress = HAND[spec]
    assert report.storage == pytest.approx(BASE + storage)
    assert report.egress == pytest.approx(egress)
    assert report.total == pytest.approx(BASE + storage + egress)
    assert report.reads == 4


def test_learned_without_history_behaves_like_t_even():
    prices = toy_prices()
    report = replay(TRACE, make_policy("learned", prices, {"a": "a", "b": "b"}), prices)
    assert report.total == pytest.approx(BASE + 240 * S + 0.2)


def test_clairvoyant_optimum():
    # gaps in b: 10->50 (40 s < T_even: keep, 0.04), 50->300 (250 s > T_even: drop), 300->end (no next read)
    report = clairvoyant(TRACE, toy_prices())
    assert report.storage == pytest.approx(BASE + 40 * S)
    assert report.egress == pytest.approx(2 * 0.1)
    assert report.hits == 2  # the read at 50 in b and the base read at 400


def test_requests_are_charged():
    prices = toy_prices(get=0.001, put=0.01)
    report = replay(TRACE, make_policy("always-store", prices, {"a": "a", "b": "b"}), prices)
    # PUT: the write in a, the replica in b; GET: at the source a (10), in b (50, 300), in a (400)
    assert report.put_requests == pytest.approx(2 * 0.01)
    assert report.get_requests == pytest.approx(4 * 0.001)
    assert report.total == pytest.approx(BASE + 390 * S + 0.1 + 0.024)


def test_rewrite_replaces_copies_and_delete_removes_them():
    prices = toy_prices()
    events = [Event(0, "write", "a", "k", GB), Event(10, "read", "b", "k", GB),
              Event(20, "write", "b", "k", GB),   # new base in b; the old base and the replica go
              Event(30, "read", "a", "k", GB),    # fetched from b, kept (always-store)
              Event(40, "delete", "a", "k", 0), Event(45, "read", "b", "k", GB), Event(50, "read", "a", "x", 1)]
    report = replay(events, make_policy("always-store", prices, {"a": "a", "b": "b"}), prices)
    # a base 0..20, b replica 10..20, b base 20..40, a replica 30..40
    assert report.storage == pytest.approx((20 + 10 + 20 + 10) * S)
    assert report.egress == pytest.approx(2 * 0.1)
    assert report.missing_reads == 2
    assert (report.writes, report.deletes) == (2, 1)


def test_trace_end_stops_storage_and_regions_are_required():
    prices = toy_prices()
    report = replay([Event(0, "write", "a", "k", 2 * GB), Event(100, "write", "a", "j", 0)],
                    make_policy("always-store", prices, {}), prices)
    assert report.storage == pytest.approx(2 * 100 * S)
    with pytest.raises(ValueError, match="spread"):
        replay([Event(0, "write", "", "k", 1)], make_policy("t_even", prices, {}), prices)


def test_simulate_reports_ratios_to_optimum():
    result = simulate(TRACE, ["always-evict", "always-store"], toy_prices(), ["a", "b"])
    optimum = BASE + 40 * S + 0.2
    assert result["optimum"]["total"] == pytest.approx(optimum)
    assert result["ratio_to_optimum"]["always-evict"] == pytest.approx((BASE + 0.3) / optimum)


# ---- readers and transforms ---------------------------------------------------------------------------------

def test_ibm_reader(tmp_path):
    path = tmp_path / "t.ssv"
    path.write_text("1000 REST.HEAD.OBJECT h 10\n"
                    "2000 REST.GET.OBJECT old 500 0 99\n"     # first seen by a ranged GET: implicit write
                    "2500 REST.PUT.OBJECT new 300\n"
                    "3000 REST.COPY.OBJECT cp 300\n"
                    "3500 REST.GET.OBJECT new 300\n"
                    "4000 REST.DELETE.OBJECT new 0\n"
                    "4500 REST.LIST.BUCKET x 0\n\n")
    events = read_ibm_trace(path)
    assert [(e.time, e.op, e.key, e.size) for e in events] == [
        (2.0, "write", "old", 500), (2.0, "read", "old", 500), (2.5, "write", "new", 300),
        (3.0, "write", "cp", 300), (3.5, "read", "new", 300), (4.0, "delete", "new", 0)]
    assert {e.region for e in events} == {""}
    bad = tmp_path / "bad.ssv"
    bad.write_text("1000 REST.GET.OBJECT\n")
    with pytest.raises(ValueError, match="bad.ssv:1"):
        read_ibm_trace(bad)


def test_multiregion_reader(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("timestamp,op,issue_region,obj_key,size\n"
                    "2023-12-01 18:08:50,write,aws:us-west-2,k1,100\n"
                    "2023-12-01 18:08:56,read,aws:ca-central-1,k1,100\n")
    events = prepare(read_multiregion_trace(path))
    assert [(e.time, e.op, e.region, e.key, e.size) for e in events] == [
        (0.0, "write", "aws:us-west-2", "k1", 100), (6.0, "read", "aws:ca-central-1", "k1", 100)]


def test_generic_csv_reader_with_and_without_header(tmp_path):
    with_header = tmp_path / "h.csv"
    with_header.write_text("time,op,region,key,size\n0,write,a,k,10\n1.5,GET,b,k,10\n")
    without = tmp_path / "n.csv"
    without.write_text("0,put,a,k,10\n1.5,read,b,k,10\n")
    assert read_csv_trace(with_header) == read_csv_trace(without)
    assert read_csv_trace(without)[1] == Event(1.5, "read", "b", "k", 10)
    bad = tmp_path / "bad.csv"
    bad.write_text("0,fly,a,k,10\n")
    with pytest.raises(ValueError, match="fly"):
        read_csv_trace(bad)


def test_time_scale():
    events = prepare([Event(12, "read", "a", "k", 1), Event(10, "write", "a", "k", 1)], time_scale=100)
    assert [(e.op, e.time) for e in events] == [("write", 0.0), ("read", 200.0)]


def single_region_trace():
    events = []
    for i in range(20):
        events.append(Event(i, "write", "", f"k{i}", 1))
        events += [Event(100 + 10 * r + i, "read", "", f"k{i}", 1) for r in range(6)]
    return sorted(events, key=lambda e: e.time)


def test_spread_one_all_random():
    regions = ["r0", "r1", "r2"]
    events = single_region_trace()
    one = spread_events(events, regions, "one", seed=1)
    for key in {e.key for e in events}:
        home = {e.region for e in one if e.key == key and e.op == "write"}
        readers = {e.region for e in one if e.key == key and e.op == "read"}
        assert len(home) == 1 and len(readers) == 1 and home != readers
    every = spread_events(events, regions, "all", seed=1)
    for key in {e.key for e in events}:
        assert {e.region for e in every if e.key == key and e.op == "read"} == set(regions)
    rand = spread_events(events, regions, "random", seed=1)
    assert rand == spread_events(events, regions, "random", seed=1)  # seeded
    assert rand != spread_events(events, regions, "random", seed=2)
    with pytest.raises(ValueError, match="spread"):
        spread_events(events, regions, "sideways")


def test_map_regions_round_robin():
    events = [Event(0, "write", "x", "k", 1), Event(1, "read", "y", "k", 1), Event(2, "read", "z", "k", 1)]
    assert [e.region for e in map_regions(events, ["a", "b"])] == ["a", "b", "a"]


# ---- CLI ----------------------------------------------------------------------------------------------------

def write_toy_trace(tmp_path) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text("time,op,region,key,size\n" + "".join(
        f"{e.time},{e.op},{e.region},{e.key},{e.size}\n" for e in TRACE))
    return path


def test_cli_main(tmp_path, capsys):
    path = write_toy_trace(tmp_path)
    code = main(["--trace", str(path), "--policy", "always-evict", "--policy", "t_even",
                 "--region-list", "aws:us-east-1,aws:eu-west-1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert set(result["policies"]) == {"always-evict", "t_even"}
    assert result["reads"] == 4 and result["prices"].startswith("list prices")
    # list prices: 3 remote reads of 1 GB at $0.02 within AWS, 400 s of base storage, 4 GETs and 1 PUT
    evict = result["policies"]["always-evict"]
    assert evict["egress"] == pytest.approx(3 * 0.02)
    assert evict["storage"] == pytest.approx(400 * 0.023 / SECONDS_PER_MONTH)
    assert evict["requests"] == pytest.approx(4 * 0.0004 / 1000 + 0.005 / 1000)
    assert "optimum" in result and "always-evict" in captured.err  # the table goes to stderr


def test_cli_errors(tmp_path, capsys):
    path = write_toy_trace(tmp_path)
    assert main(["--trace", str(tmp_path / "missing.csv")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["--trace", str(path), "--policy", "bogus"]) == 2
    assert "unknown placement policy" in capsys.readouterr().err
    assert main(["--trace", str(path), "--format", "parquet"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main(["--trace", str(path), "--regions", "2", "--prices", str(tmp_path)]) == 2
    assert "egress_cost.csv" in capsys.readouterr().err
    assert main(["--trace", str(path), "--region-list", "aws:us-east-1,nowhere"]) == 0  # list prices take any id
    capsys.readouterr()


def test_region_list_and_trace_in_the_dash_spelling(tmp_path, capsys):
    path = tmp_path / "dash.csv"
    path.write_text("time,op,region,key,size\n0,write,aws-us-east-1,k,1000000000\n10,read,aws-eu-west-1,k,1000000000\n")
    results = []
    for region_list in ("aws:us-east-1,aws:eu-west-1", "aws-us-east-1,aws-eu-west-1"):
        assert main(["--trace", str(path), "--policy", "always-evict", "--region-list", region_list]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["regions"] == results[1]["regions"] == ["aws:us-east-1", "aws:eu-west-1"]
    assert results[0]["policies"] == results[1]["policies"]
    assert results[1]["policies"]["always-evict"]["egress"] == pytest.approx(0.02)  # within AWS, not across vendors
    assert read_csv_trace(path)[0].region == "aws:us-east-1"


@needs_shared
def test_cli_on_shipped_traces(capsys):
    code = main(["--trace", str(SHARED / "ibm_trace_sample.ssv"), "--policy", "learned", "--policy",
                 "always-evict", "--regions", "3", "--prices", str(SHARED), "--time-scale", "1000"])
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out)
    assert result["format"] == "ibm" and result["regions"][0] == "aws:us-east-1"
    assert result["ratio_to_optimum"]["learned"] < result["ratio_to_optimum"]["always-evict"]
    code = main(["--trace", str(SHARED / "multiregion_trace_small.csv"), "--policy", "t_even",
                 "--prices", str(SHARED)])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["format"] == "multiregion" and result["reads"] == 70
    assert main(["--trace", str(SHARED / "multiregion_trace_small.csv"), "--region-list", "aws:mars-1",
                 "--prices", str(SHARED)]) == 2
    assert "aws:mars-1" in capsys.readouterr().err

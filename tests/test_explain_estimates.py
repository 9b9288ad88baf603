"""EXPLAIN with estimates (``llm_sql.estimate``): the counts explain predicts are the engine's own on a run.

The real embedded engine on a tiny random checkpoint, greedy decoding, the result cache off unless a test turns it
on. Estimates are made with no LLM call; ``analyze=True`` runs the query and sets ``last_stats`` beside them.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

import llm_sql
from engine_backend.backends.base import BatchRecord
from llm_sql.estimate import TimeModel, choice_lengths, simulate_prefix_cache

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "llmsql"
BEERS = [("Simcoe IPA", "India Pale Ale", "Crisp and clean, lovely hops."),
         ("Grand Cru", "Belgian Ale", "Tasted like wet cardboard."),
         ("Night Stout", "Stout", "Rich coffee notes, great stout."),
         ("Summer Lager", "Lager", "Flat and overly sweet."),
         ("Hazy Days", "India Pale Ale", "Bright citrus, juicy and balanced."),
         ("Old Ale", "English Ale", None)]
FILTER = "SELECT name FROM beers WHERE llm_filter('Is this beer strong?', style, review)"
PROJECTION = "SELECT name, llm('Describe the beer', style, review) AS d FROM beers"
MULTI = ("SELECT name, llm('Describe the beer', style, review) AS d FROM beers "
         "WHERE llm_filter('Is this beer strong?', style, review)")


def fill(con: duckdb.DuckDBPyConnection) -> None:
    rows = [(f"{BEERS[i % 6][0]} {i % 4}", BEERS[i % 6][1], BEERS[i % 6][2]) for i in range(24)]
    rows += [(None, None, None), ("Mystery", None, None)]  # all-NULL inputs: no call
    con.execute("CREATE TABLE beers (name VARCHAR, style VARCHAR, review VARCHAR)")
    con.executemany("INSERT INTO beers VALUES (?, ?, ?)", rows)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from engine_backend.testing import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("explain") / "tiny", arch="llama"))


@pytest.fixture()
def db(model_dir):
    con = duckdb.connect()
    fill(con)
    wrapper = llm_sql.register(con, model=model_dir, cache=False, progress=False, max_tokens=4)
    yield wrapper
    wrapper.close()
    con.close()


def engine_counts(db) -> tuple[int, int, int]:
    s = db.session.backend.engine.stats()
    return s["prompt_tokens"], s["generated_tokens"], s["num_requests_finished"]


def test_plain_explain_calls_no_llm_and_says_time_is_unknown_without_history(db):
    before = engine_counts(db)
    ex = llm_sql.explain(db, MULTI)
    assert engine_counts(db) == before and db.session.backend.stats()["requests"] == 0
    assert not db.session.backend.history().batches
    s0, s1 = ex.stages
    assert s0["rows_in"] == 26 and s0["distinct_inputs"] == 6  # 6 (style, review) pairs; the all-NULL ones are not asked
    assert s0["est_tokens_source"] == "tokenised" and s0["est_prompt_tokens"] > 0
    assert s0["est_seconds"] is None
    assert "distinct_inputs" not in s1  # counted only once stage 0 has run
    text = str(ex)
    assert "est. prompt tokens" in text and "(tokenised)" in text and "no batch measured" in text


def test_tokens_and_cached_share_equal_the_engine_on_a_fresh_cache(db):
    ex = llm_sql.explain(db, FILTER)  # the engine's cache is empty: explain simulates a fresh one
    db.session.backend.engine.reset_prefix_cache()
    db.sql(FILTER).fetchall()
    est, act = ex.stages[0], llm_sql.last_stats(db).stages[0]
    assert est["est_requests"] == act["llm_calls"] == 6
    assert est["est_prompt_tokens"] == act["prompt_tokens"]  # the engine's tokenizer, the prompts sent
    assert abs(est["est_hit_rate"] - act["prefix_hit_rate"]) <= 0.02
    assert est["est_cached_prompt_tokens"] == act["cached_prompt_tokens"]
    assert est["est_generated_tokens"] == act["generated_tokens"]  # yes / no: one token each
    assert "the choices' token lengths" in est["est_generated_source"]


def test_a_warm_cache_is_seen_as_it_is(db):
    db.sql(PROJECTION).fetchall()  # the engine now holds these prompts' blocks
    ex = llm_sql.explain(db, PROJECTION)
    db.sql(PROJECTION).fetchall()
    est, act = ex.stages[0], llm_sql.last_stats(db).stages[0]
    assert act["prefix_hit_rate"] > 0.5
    assert est["est_cached_prompt_tokens"] == act["cached_prompt_tokens"]
    # free text: the mean the backend measured on the first run's requests of the same kind
    assert est["est_generated_tokens"] == act["generated_tokens"] and "measured" in est["est_generated_source"]
    assert est["est_seconds"] is not None and "measured batch" in est["est_seconds_source"]


def test_analyze_sets_last_stats_beside_the_estimates(db):
    ex = llm_sql.explain(db, MULTI, analyze=True)
    stats = llm_sql.last_stats(db)
    assert ex.actual is stats and ex.probe_seconds > 0  # nothing measured before: probed first
    assert [s["actual"] for s in ex.stages] == stats.stages
    s0, s1 = ex.stages
    assert s1["distinct_inputs"] == s1["actual"]["distinct_inputs"]  # counted after stage 0 ran
    for s in ex.stages:
        a = s["actual"]
        assert (s["est_requests"], s["est_prompt_tokens"], s["est_cached_prompt_tokens"]) == \
            (a["llm_calls"], a["prompt_tokens"], a["cached_prompt_tokens"])
        assert s["est_seconds"] > 0
    text = str(ex)
    assert "estimate" in text and "actual" in text and "est/actual" in text and "probed the backend" in text
    assert ex.result_rows == len(db.sql(MULTI).fetchall())


def test_steps_simulated_for_the_history_are_the_engines(db):
    engine = db.session.backend.engine
    count = {"steps": 0}
    step = engine.step

    def counting():
        count["steps"] += 1
        return step()

    engine.step = counting
    try:
        db.sql(PROJECTION).fetchall()
    finally:
        del engine.step
    assert db.session.backend.history().batches[-1].steps == count["steps"] > 0


def test_dedup_off_and_the_result_cache(model_dir, tmp_path):
    con = duckdb.connect()
    fill(con)
    db = llm_sql.register(con, model=model_dir, progress=False, max_tokens=4, dedup=False,
                          cache_path=str(tmp_path / "cache.sqlite"))
    try:
        ex = llm_sql.explain(db, FILTER)
        db.sql(FILTER).fetchall()
        est, act = ex.stages[0], llm_sql.last_stats(db).stages[0]
        assert est["est_requests"] == act["llm_calls"] == 24  # every row with a value, duplicates too
        assert est["est_prompt_tokens"] == act["prompt_tokens"]
        assert est["est_cached_prompt_tokens"] == act["cached_prompt_tokens"]
        again = llm_sql.explain(db, FILTER).stages[0]  # every prompt is in the result cache now
        assert again["est_requests"] == 0 and again["est_result_cache_hits"] == 24 and again["est_seconds"] == 0.0
    finally:
        db.close()
        con.close()


def test_simulated_prefix_cache_rules():
    b = 4
    a = list(range(10))  # blocks [0..3] [4..7], last token 9
    assert simulate_prefix_cache([a, a], b) == [0, 8]
    assert simulate_prefix_cache([a[:8], a[:8]], b) == [0, 4]  # the last token is always computed
    c = [0, 1, 2, 3, 9, 9, 9, 9, 5]
    assert simulate_prefix_cache([a, c], b) == [0, 4]  # the chain breaks at the second block
    assert simulate_prefix_cache([a], b, already=[2]) == [8]


def test_time_model_fit():
    truth = (2e-4, 3e-3, 1e-2, 5e-3)
    recs = [BatchRecord(r, u, g, sum(c * x for c, x in zip(truth, (u, g, r, s))), s)
            for r, u, g, s in [(10, 1000, 10, 3), (50, 200, 400, 20), (100, 8000, 100, 12), (5, 50, 200, 40),
                               (30, 3000, 240, 15)]]
    model = TimeModel.fit(recs)
    assert model.uses_steps and model.batches == 5
    assert model.predict(500, 50, 20, 7) == pytest.approx(sum(c * x for c, x in zip(truth, (500, 50, 20, 7))))
    # without steps, and with data that a negative coefficient would fit better: all coefficients stay >= 0
    recs = [BatchRecord(10, 1000, 10, 1.0), BatchRecord(10, 1000, 100, 0.5), BatchRecord(20, 10, 10, 0.2)]
    model = TimeModel.fit(recs)
    assert not model.uses_steps and min(model.coef) >= 0
    assert TimeModel.fit([]) is None
    one = TimeModel.fit([BatchRecord(10, 1000, 10, 2.0, 5)])  # one batch: it predicts itself
    assert one.predict(1000, 10, 10, 5) == pytest.approx(2.0)


def test_choice_lengths_count_the_eos_a_prefix_choice_needs(model_dir):
    from engine_backend.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(model_dir)
    n = len(tok.encode(" yes", add_special_tokens=False))
    assert choice_lengths([" yes", " yes please"], tok)[0] == n + 1
    assert choice_lengths([" yes", " no"], tok)[0] == n


def test_cli_explain_and_analyze(model_dir, tmp_path, capsys):
    from llm_sql.cli import main

    csv = tmp_path / "beers.csv"
    csv.write_text("name,style\n" + "".join(f"b{i},{['IPA', 'Stout', 'Lager'][i % 3]}\n" for i in range(9)))
    sql = f"SELECT name FROM '{csv}' WHERE llm_filter('Is it strong?', style)"
    assert main(["query", sql, "--model", model_dir, "--no-cache", "--no-progress", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "est. prompt tokens" in out and "est. LLM seconds" in out and "unknown" in out
    assert main(["query", sql, "--model", model_dir, "--no-cache", "--no-progress", "--analyze"]) == 0
    out = capsys.readouterr().out
    assert "est/actual" in out and "ran: " in out


@pytest.mark.skipif(not (DATA / "beer.csv").is_file(), reason="the shipped tables are not here")
def test_bench_quick(model_dir, tmp_path):
    proc = subprocess.run([sys.executable, "bench/explain_estimates.py", "--quick", "--model", model_dir,
                           "--queries", "beer_filter,movies_multi", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "explain_estimates.json").read_text())
    s = data["summary"]
    assert s["queries"] == 2 and s["stages"] == 3
    assert s["tokens_exact"] and s["cached_exact"]
    assert all(r["seconds_est"] > 0 for r in data["stages"])


def test_a_backend_without_tokenizer_or_steps_gets_guesses_said_so(model_dir):
    """An OpenAI-compatible server, as the estimator sees one (our own server over HTTP): no tokenizer, no engine
    steps; tokens are guessed until batches are measured, and the time comes from those batches alone."""
    from engine_backend import LLMEngine
    from engine_backend.async_engine import AsyncLLMEngine
    from engine_backend.server import ServerThread, create_app

    con = duckdb.connect()
    fill(con)
    with AsyncLLMEngine(LLMEngine(model=model_dir)) as aengine, \
            ServerThread(create_app(aengine, "explain-key", aengine.model_name)) as srv:
        db = llm_sql.register(con, backend="openai", base_url=srv.url, api_key="explain-key",
                              model=aengine.model_name, cache=False, progress=False)
        try:
            s = llm_sql.explain(db, FILTER).stages[0]
            assert s["est_tokens_source"].startswith("guessed") and s["est_seconds"] is None
            db.sql(FILTER).fetchall()
            db.sql(PROJECTION).fetchall()
            db.sql("SELECT llm_filter('Is it dark?', review) FROM beers").fetchall()
            s = llm_sql.explain(db, FILTER).stages[0]
            assert s["est_seconds"] is not None and s["est_seconds"] > 0
            assert "engine step" not in s["est_seconds_source"]
        finally:
            db.close()
    con.close()

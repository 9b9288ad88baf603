"""``llm_sql.explain`` in Spark on a real local[2] session with the Catalyst extension and a tiny engine: the plan
through the rules, each countable LLM call's rows and estimates made on the driver without calling the LLM, and
with ``analyze`` the estimates beside what the workers reported for the same call."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pyspark = pytest.importorskip("pyspark")
if shutil.which("javac") is None or shutil.which("java") is None:
    pytest.skip("the Catalyst extension needs java and javac", allow_module_level=True)
from pyspark.sql import functions as F  # noqa: E402

if not hasattr(F, "arrow_udf"):
    pytest.skip("llm-sql's Spark UDFs need pyspark >= 4.1", allow_module_level=True)

import llm_sql  # noqa: E402
from llm_sql import spark_mode  # noqa: E402
from llm_sql.functions import llm  # noqa: E402
from test_explain_estimates import BEERS  # noqa: E402 - the same beers as DuckDB mode's explain tests

ROWS = [(i, f"{BEERS[i % 6][0]} {i % 4}", BEERS[i % 6][1], BEERS[i % 6][2]) for i in range(24)]
ROWS += [(24, None, None, None), (25, "Mystery", None, None)]  # all-NULL inputs: no call
FILTER = ("SELECT name FROM beers WHERE id > 1 AND llm_filter('Is this beer strong?', struct(style, review))")
MULTI = ("SELECT name, llm('Describe the beer', struct(style, review)) AS d FROM beers "
         "WHERE llm_filter('Is this beer strong?', struct(style, review))")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from engine_backend.testing import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("explain_spark") / "tiny", arch="llama"))


@pytest.fixture(scope="module")
def spark(model_dir, extension_spark):
    with extension_spark(model_dir, "llm-sql-explain-test", max_tokens=3) as session:
        session.createDataFrame(ROWS, "id int, name string, style string, review string").repartition(2) \
            .createOrReplaceTempView("beers")
        yield session


def served_requests(node_server) -> int:
    return sum(b["requests"] for b in node_server.server_cost()["batches"])


def test_explain_counts_and_estimates_without_calling_the_llm(spark, node_server):
    before = served_requests(node_server)
    ex = llm_sql.explain(spark, FILTER)
    assert served_requests(node_server) == before  # counting ran Spark jobs below the call, never the model
    (s,) = ex.stages
    assert s["function"] == "llm_filter" and s["deduplicated"]
    assert s["rows_in"] == 24  # id > 1: the cheap predicate runs first
    assert s["distinct_inputs"] == 6  # (style, review) pairs of those rows, the all-NULL ones not asked
    assert s["fields"] == ["style", "review"]
    assert s["est_requests"] == 6 and s["est_tokens_source"] == "tokenised" and s["est_prompt_tokens"] > 0
    assert s["est_hit_source"].startswith("block-level prefix cache")  # the server's block size
    assert s["est_generated_tokens"] == 6 and "choices" in s["est_generated_source"]
    text = str(ex)
    assert "rows in / distinct:  24 / 6 (the rules deduplicate)" in text
    assert "optimised plan (after the llm-sql Catalyst rules)" in text and "Aggregate" in text


def test_analyze_puts_the_workers_figures_beside_the_estimates(spark):
    ex = llm_sql.explain(spark, MULTI, analyze=True)
    assert ex.analyzed and ex.run_seconds > 0
    first, second = sorted(ex.stages, key=lambda s: s["function"] != "llm_filter")
    # the filter reads the table: estimated before the run, its actuals from the workers' reports of the same call
    a = first["actual"]
    assert (first["est_requests"], first["est_prompt_tokens"], first["est_generated_tokens"]) == \
        (a["llm_calls"], a["prompt_tokens"], a["generated_tokens"]) == (6, a["prompt_tokens"], 6)
    # two partitions reach the engine together: the second batch's first prompt may miss what the first is computing
    assert abs(first["est_cached_prompt_tokens"] - a["cached_prompt_tokens"]) <= 0.1 * a["prompt_tokens"]
    assert first["est_seconds"] is not None and a["llm_seconds"] > 0
    # the projection reads the filter's output: listed, not counted (counting would call the model)
    assert "inputs come from another LLM call" in second["not_counted"]
    assert second["actual"]["llm_calls"] > 0
    text = str(ex)
    assert "est/actual" in text and "ran in" in text


def test_an_llm_join_asks_each_distinct_pair_once(spark):
    """JOIN ... ON cheap keys AND llm_filter(pair): the rules lift the LLM conjunct over the pairs the keys match and
    ask each distinct pair once; the rows equal the rules-off plan's (Spark's own per-pair evaluation)."""
    flavours = [("India Pale Ale", "hops"), ("India Pale Ale", "citrus"), ("Stout", "coffee"), ("Lager", "grain")]
    spark.createDataFrame(flavours, "style string, flavour string").createOrReplaceTempView("flavours")
    pairs = [(review, flavour) for _, _, style, review in ROWS for s2, flavour in flavours if style == s2]
    q = ("SELECT b.id, f.flavour FROM beers b JOIN flavours f ON b.style = f.style AND "
         "llm_filter('Does the review mention the flavour?', struct(b.review, f.flavour))")
    ex = llm_sql.explain(spark, q, analyze=True)
    (s,) = ex.stages
    assert s["deduplicated"] and s["rows_in"] == len(pairs) == 24
    assert s["distinct_inputs"] == s["est_requests"] == s["actual"]["llm_calls"] == len(set(pairs)) == 6
    got = sorted(spark.sql(q).collect())
    spark.conf.set(spark_mode.OPTIMIZE_CONF, "false")
    try:
        assert sorted(spark.sql(q).collect()) == got
    finally:
        spark.conf.set(spark_mode.OPTIMIZE_CONF, "true")


def test_a_dataframe_is_explained_too(spark):
    df = spark.table("beers").where("id < 12").select(llm("Describe the beer", "style"))
    (s,) = llm_sql.explain(df).stages
    assert (s["rows_in"], s["distinct_inputs"], s["fields"]) == (12, 5, ["style"])  # the API names its struct
    with pytest.raises(TypeError, match="DataFrame"):
        llm_sql.explain(df, "SELECT 1")


def test_calls_that_cannot_be_counted_say_why(spark):
    ex = llm_sql.explain(spark, "SELECT style, llm_agg('Summarise', review) AS s FROM beers GROUP BY style")
    (s,) = ex.stages
    assert "LLM aggregate" in s["not_counted"]
    assert "not counted" in str(ex)
    assert llm_sql.explain(spark, "SELECT name FROM beers WHERE id < 3").stages == []
    limited = llm_sql.explain(spark, "SELECT llm('Describe the beer', struct(style)) FROM beers LIMIT 3")
    assert limited.bounded and "counts above are upper bounds" in str(limited)


DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "llmsql"


@pytest.mark.skipif(not (DATA / "beer.csv").is_file(), reason="the shipped tables are not here")
def test_bench_quick(model_dir, tmp_path):
    """The Spark bench on the shipped tables in its own process (its own Spark session and engine server)."""
    proc = subprocess.run([sys.executable, "bench/explain_estimates_spark.py", "--quick", "--rows", "12", "--model",
                           model_dir, "--queries", "beer_filter,beer_multi", "--out", str(tmp_path)],
                          cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = json.loads((tmp_path / "explain_estimates_spark.json").read_text())["summary"]
    assert s["queries"] == 2 and s["requests_exact"] and s["tokens_exact"] and s["generated_exact"]

"""Spark mode on a real local[2] session: the four functions in SQL and the DataFrame API, one engine server
per node shared by the Python workers, recovery of a dead server. A tiny random-weight model answers
nonsense; what is checked is that the Spark path gives exactly the plain per-row evaluation (greedy)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings

import pytest

pyspark = pytest.importorskip("pyspark")
if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
    pytest.skip("Spark needs Java (no java on PATH, no JAVA_HOME)", allow_module_level=True)
from pyspark.sql import functions as F  # noqa: E402

if not hasattr(F, "arrow_udf"):
    pytest.skip("llm-sql's Spark UDFs need pyspark >= 4.1", allow_module_level=True)

import llm_sql  # noqa: E402
from llm_sql import node_engine, spark_mode  # noqa: E402
from llm_sql.functions import llm, llm_classify, llm_filter, llm_score  # noqa: E402
from udf.api import EvalSettings  # noqa: E402
from udf.batch import evaluate  # noqa: E402
from udf.functions import make_call  # noqa: E402

MAX_TOKENS = 3
ROWS = [  # id, review, style; duplicates and NULLs on purpose
    (1, "crisp and hoppy", "IPA"), (2, "flat and sour", "Sour"), (3, "crisp and hoppy", "IPA"),
    (4, "roasty, coffee notes", "Stout"), (5, None, None), (6, "flat and sour", "Sour"),
    (7, "clean lager", "Lager"), (8, None, "IPA"), (9, "roasty, coffee notes", "Stout"), (10, "clean lager", "Lager"),
    (11, "too sweet", "Sour"), (12, "crisp and hoppy", "IPA"),
]
LABELS = ["positive", "negative"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from engine_backend.testing import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("spark") / "tiny", arch="llama"))


@pytest.fixture(scope="module")
def spark(model_dir):
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[2]").appName("llm-sql-test")
               .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.shuffle.partitions", "2")
               # This module tests the UDF path alone (the rules are tests/test_catalyst.py's): a session an
               # earlier module built in this JVM must not hand its extension down.
               .config("spark.sql.extensions", "").getOrCreate())
    assert not spark_mode.extension_loaded(session)
    spark_mode._WARNED["extension"] = False
    with pytest.warns(RuntimeWarning, match="Catalyst extension"):
        llm_sql.register(session, model=model_dir, max_tokens=MAX_TOKENS, cache=False)
    df = session.createDataFrame(ROWS, "id int, review string, style string").repartition(2)
    df.createOrReplaceTempView("reviews")
    yield session
    spark_mode.stop(session)
    session.stop()


@pytest.fixture()
def plain(spark):
    """The plain per-row evaluation (no dedup, no reordering) against the same engine server."""
    from engine_backend.backends import make_backend

    info = spark_mode.server_info(spark)
    backend = make_backend("openai", base_url=info["url"], api_key=info["token"])
    settings = EvalSettings(dedup=False, reorder=False, result_cache=False, progress=False,
                            defaults={"max_tokens": MAX_TOKENS})

    def run(function, names, rows, instruction=None, labels=None, options=None):
        call = make_call(function, instruction=instruction, field_names=names, labels=labels, options=options)
        return evaluate(call, rows, backend, settings=settings).values

    yield run
    backend.close()


def by_id(rows):
    return [r[1] for r in sorted(rows, key=lambda r: r[0])]


REV_STYLE = [(r, s) for _, r, s in ROWS]


def test_sql_forms_equal_plain(spark, plain):
    q = spark.sql("""SELECT id,
        llm('Describe the beer', struct(review, style)) AS a,
        llm_filter('Is the review positive?', review) AS b,
        llm_classify(struct(review, style), array('positive', 'negative')) AS c,
        llm_score('How good is it?', struct(review, style)) AS d,
        llm('Describe the beer', review, style, named_struct('max_tokens', 2)) AS e
        FROM reviews""").collect()
    q = sorted(q, key=lambda r: r.id)
    assert [r.a for r in q] == plain("llm", ["review", "style"], REV_STYLE, "Describe the beer")
    assert [r.b for r in q] == plain("llm_filter", ["input"], [(r,) for r, _ in REV_STYLE], "Is the review positive?")
    assert [r.c for r in q] == plain("llm_classify", ["review", "style"], REV_STYLE, labels=LABELS)
    assert [r.d for r in q] == plain("llm_score", ["review", "style"], REV_STYLE, "How good is it?")
    assert [r.e for r in q] == plain("llm", ["input1", "input2"], REV_STYLE, "Describe the beer",
                                     options={"max_tokens": 2})
    assert all(isinstance(r.b, bool) for r in q if r.b is not None)
    assert all(r.c in LABELS for r in q if r.c is not None)
    assert all(1 <= r.d <= 5 for r in q if r.d is not None)
    assert all(len(r.a) > 0 for r in q if r.a is not None)
    row5 = q[4]  # all fields NULL -> NULL without a call
    assert (row5.a, row5.b, row5.c, row5.d, row5.e) == (None, None, None, None, None)
    assert q[7].a is not None  # one field NULL is still a prompt


def test_dataframe_forms_equal_sql(spark, plain):
    df = spark.table("reviews")
    out = df.select("id", llm("Describe the beer", "review", F.col("style")).alias("a"),
                    llm_filter("Is the review positive?", F.col("review").alias("input")).alias("b"),
                    llm_classify("review", "style", LABELS).alias("c"),
                    llm_score("How good is it?", ["review", "style"], options={"max_tokens": 9}).alias("d"),
                    llm_classify(F.col("review"), labels=LABELS).alias("f")).collect()
    out = sorted(out, key=lambda r: r.id)
    assert [r.a for r in out] == plain("llm", ["review", "style"], REV_STYLE, "Describe the beer")
    assert [r.b for r in out] == plain("llm_filter", ["input"], [(r,) for r, _ in REV_STYLE],
                                       "Is the review positive?")
    assert [r.c for r in out] == plain("llm_classify", ["review", "style"], REV_STYLE, labels=LABELS)
    assert [r.d for r in out] == plain("llm_score", ["review", "style"], REV_STYLE, "How good is it?")
    assert [r.f for r in out] == plain("llm_classify", ["review"], [(r,) for r, _ in REV_STYLE], labels=LABELS)
    with pytest.raises(ValueError, match="unknown option"):
        llm("x", "review", options={"max_tokenz": 3})
    with pytest.raises(ValueError, match="labels"):
        llm_classify("review", [])


def test_filter_projection_and_group_by(spark, plain):
    keep = plain("llm_filter", ["review"], [(r,) for r, _ in REV_STYLE], "Is the review positive?")
    desc = plain("llm", ["review"], [(r,) for r, _ in REV_STYLE], "Summarise")
    expected = sorted((i, d) for (i, _, _), k, d in zip(ROWS, keep, desc) if k)
    got = spark.sql("""SELECT id, llm('Summarise', struct(review)) AS s FROM reviews
                       WHERE style <> 'Lager' AND llm_filter('Is the review positive?', struct(review))""").collect()
    assert sorted((r.id, r.s) for r in got) == [e for e in expected if ROWS[e[0] - 1][2] != "Lager"]
    df_got = (spark.table("reviews").where(llm_filter("Is the review positive?", "review"))
              .select("id").collect())
    assert sorted(r.id for r in df_got) == sorted(i for (i, _, _), k in zip(ROWS, keep) if k)

    scores = plain("llm_score", ["review"], [(r,) for r, _ in REV_STYLE], "How good is it?")
    groups: dict = {}
    for (_, _, style), s in zip(ROWS, scores):
        groups.setdefault(style, []).append(s)
    want = {k: (sum(x for x in v if x is not None) / len([x for x in v if x is not None])
                if any(x is not None for x in v) else None) for k, v in groups.items()}
    got = spark.sql("SELECT style, AVG(llm_score('How good is it?', struct(review))) AS avg_score "
                    "FROM reviews GROUP BY style").collect()
    assert {r.style: r.avg_score for r in got} == pytest.approx(want)
    got_df = (spark.table("reviews").groupBy("style")
              .agg(F.avg(llm_score("How good is it?", "review")).alias("avg_score")).collect())
    assert {r.style: r.avg_score for r in got_df} == pytest.approx(want)


def test_join_on_an_llm_condition(spark, plain):
    """Spark evaluates a Python UDF in a join condition over the joined pairs (its ExtractPythonUDFFromJoinCondition):
    every pair that passes the cheap keys, each answered as the plain evaluation answers it."""
    spark.createDataFrame([("IPA", "hops"), ("IPA", "citrus"), ("Stout", "coffee"), ("Sour", "cherry")],
                          "style string, flavour string").createOrReplaceTempView("flavours")
    got = spark.sql("SELECT r.id, f.flavour FROM reviews r JOIN flavours f ON r.style = f.style AND "
                    "llm_filter('Does the review mention it?', struct(r.review, f.flavour))").collect()
    pairs = [(i, r, f) for i, r, s in ROWS for s2, f in [("IPA", "hops"), ("IPA", "citrus"), ("Stout", "coffee"),
                                                          ("Sour", "cherry")] if s == s2]
    keep = plain("llm_filter", ["review", "flavour"], [(r, f) for _, r, f in pairs], "Does the review mention it?")
    assert sorted((r.id, r.flavour) for r in got) == sorted((i, f) for (i, _, f), k in zip(pairs, keep) if k)


def test_nulls_empty_and_duplicates(spark):
    empty = spark.createDataFrame([], "review string, style string")
    assert empty.select(llm("x", "review")).collect() == []
    assert empty.where(llm_filter("x", "review", "style")).count() == 0
    nulls = spark.createDataFrame([(None, None), (None, None)], "review string, style string")
    assert [tuple(r) for r in nulls.select(llm("x", "review", "style"), llm_score("x", "review"),
                                           llm_classify("review", LABELS)).collect()] == [(None, None, None)] * 2

    spark_mode.reset_stats(spark)
    dup = spark.createDataFrame([("same review",)] * 6 + [("other review",)] * 2, "review string").coalesce(1)
    vals = [r[0] for r in dup.select(llm("Summarise", "review")).collect()]
    assert len(set(vals[:6])) == 1 and len(set(vals[6:])) == 1
    stats = llm_sql.last_stats(spark)
    assert (stats.rows_in, stats.distinct_inputs, stats.llm_calls) == (8, 2, 2)  # one Arrow batch, deduplicated
    assert stats.prompt_tokens > 0 and stats.errors == 0


def test_result_cache_answers_a_repeated_query(spark, model_dir, tmp_path):
    """With the result cache on, a second run of a query makes no LLM call and gives the same rows."""
    query = "SELECT id, llm('Summarise', struct(review)) AS s FROM reviews"  # no ORDER BY: its sampling job runs the UDF
    try:
        llm_sql.register(spark, model=model_dir, max_tokens=MAX_TOKENS, cache_path=str(tmp_path / "r.sqlite"))
        first = sorted(spark.sql(query).collect())
        # Cold: someone computed each answer first; the two workers share the cache file, so one may already
        # hit what the other just wrote (how many is a race). Warm: every answer is in it.
        assert llm_sql.last_stats(spark).llm_calls > 0
        spark_mode.reset_stats(spark)
        assert sorted(spark.sql(query).collect()) == first
        warm = llm_sql.last_stats(spark)
        assert warm.llm_calls == 0 and warm.cache_hits > 0
    finally:  # the module's other tests count LLM calls
        llm_sql.register(spark, model=model_dir, max_tokens=MAX_TOKENS, cache=False)


def _server_processes(model_dir):
    """Live engine-server processes serving ``model_dir`` on this machine."""
    from pathlib import Path

    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if node_engine.SERVE_MARKER in cmd and model_dir in cmd and node_engine.pid_alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def test_two_workers_share_one_server(spark, model_dir):
    import httpx

    info = spark_mode.server_info(spark)
    assert info["starts"] == 1 and node_engine.healthy(info)
    metrics = lambda: httpx.get(info["url"] + "/metrics", headers={"Authorization": f"Bearer {info['token']}"}).text  # noqa: E731

    def submitted(text):
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("llm_sql_requests_submitted_total"))

    before = submitted(metrics())
    spark_mode.reset_stats(spark)
    rows = [(f"review number {i}",) for i in range(40)]
    df = spark.createDataFrame(rows, "review string").repartition(2)
    assert df.rdd.getNumPartitions() == 2
    assert len(df.select(llm("Summarise", "review")).collect()) == 40
    stats = llm_sql.last_stats(spark)
    assert stats.llm_calls == 40
    assert len(stats.worker_pids) == 2, stats.worker_pids  # two Python workers ...
    assert stats.server_pids == [info["pid"]]  # ... one engine server
    assert submitted(metrics()) - before == 40
    assert spark_mode.server_info(spark) == info  # server.json written once
    assert len(_server_processes(model_dir)) == 1


def test_register_warns_once_only(spark, model_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        llm_sql.register(spark, model=model_dir, max_tokens=MAX_TOKENS, cache=False)  # no 2nd warning, same server
    assert spark_mode.server_info(spark)["starts"] == 1


def test_stale_record_and_taken_port_recovered(model_dir, monkeypatch):
    key = node_engine.app_key("test-stale", model_dir)
    d = node_engine.engine_dir(key)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    stale_port = node_engine.free_port()
    node_engine._write_state(d, {"pid": dead.pid, "port": stale_port, "url": f"http://127.0.0.1:{stale_port}",
                                 "token": "x", "starts": 3})
    ports = iter([taken.getsockname()[1]])
    real_free_port = node_engine.free_port
    monkeypatch.setattr(node_engine, "free_port", lambda host="127.0.0.1": next(ports, None) or real_free_port())
    try:
        state = node_engine.ensure_server(key, model_dir)
        assert node_engine.healthy(state) and state["pid"] != dead.pid
        assert state["port"] != taken.getsockname()[1]  # the taken port was retried on another
        assert state["starts"] == 4
        assert node_engine.read_state(key) == state
        assert node_engine.ensure_server(key, model_dir)["pid"] == state["pid"]  # healthy: reused
    finally:
        taken.close()
        assert node_engine.stop_server(key)
    assert node_engine.read_state(key) is None and not node_engine.pid_alive(state["pid"])


def test_batch_is_retried_after_a_backend_failure(spark, plain):
    """A server lost mid-batch: the UDF reconnects (routing again restarts a dead server) and redoes the batch."""
    import pyarrow as pa

    from engine_backend.backends import make_backend
    from udf.arrow_calls import Target
    from udf.spark_udf import make_arrow_udf

    info = spark_mode.server_info(spark)
    dead = make_backend("openai", base_url=f"http://127.0.0.1:{node_engine.free_port()}", api_key="x",
                        max_retries=0)
    good = make_backend("openai", base_url=info["url"], api_key=info["token"])
    handed = []

    def route(model):
        handed.append(model)
        return Target(dead if len(handed) == 1 else good)

    settings = EvalSettings(result_cache=False, progress=False, defaults={"max_tokens": MAX_TOKENS})
    fn = make_arrow_udf("llm", route, settings).func
    reviews = [r for _, r, _ in ROWS]
    try:
        out = fn(pa.array(["Summarise"] * len(reviews)), pa.array(reviews)).to_pylist()
    finally:
        good.close()
        dead.close()
    assert len(handed) == 2
    assert out == plain("llm", ["input"], [(r,) for r in reviews], "Summarise")


def test_dead_server_is_restarted_by_a_worker(spark, model_dir):
    """Last: kills the session's server; the next query's workers restart it under the lock."""
    old = spark_mode.server_info(spark)
    node_engine._kill(old["pid"])
    assert not node_engine.healthy(old)
    spark_mode.reset_stats(spark)
    got = spark.createDataFrame([("a",), ("b",)], "review string").select(llm("Summarise", "review")).collect()
    assert len(got) == 2 and all(r[0] is not None for r in got)
    new = spark_mode.server_info(spark)
    assert new["pid"] != old["pid"] and new["starts"] == old["starts"] + 1 and node_engine.healthy(new)
    assert llm_sql.last_stats(spark).server_pids == [new["pid"]]
    assert len(_server_processes(model_dir)) == 1


def test_workers_run_the_drivers_interpreter(spark):
    """register() pointed the workers at this interpreter, not at python3 from PATH."""
    assert spark.sparkContext.pythonExec == sys.executable
    got = spark.sparkContext.parallelize([0], 1).map(lambda _: __import__("sys").executable).collect()
    assert got == [sys.executable]


def test_a_worker_interpreter_without_the_packages_is_named(spark, tmp_path, monkeypatch):
    """The user chose a worker interpreter that lacks pyarrow and llm-sql: register() says so, naming them."""
    import venv

    bare = tmp_path / "bare"
    venv.EnvBuilder(with_pip=False).create(bare)
    monkeypatch.setenv("PYSPARK_PYTHON", str(bare / "bin" / "python"))
    try:
        with pytest.warns(RuntimeWarning, match=r"cannot import .*pyarrow"):
            spark_mode.workers_run_this_python(spark, local=True)
        assert spark.sparkContext.pythonExec == str(bare / "bin" / "python")
    finally:
        spark.sparkContext.pythonExec = sys.executable


def test_two_models_and_an_instruction_without_a_field(spark, model_dir, tmp_path, own_answers):
    """models={...}: named_struct('model', 'large') answers with the second checkpoint's own tokens, the default
    with the first; llm('Say hi') asks the instruction alone."""
    from engine_backend.testing import make_tiny_model

    large = str(make_tiny_model(tmp_path / "large", arch="llama", seed=7))
    reviews = sorted({r for _, r, _ in ROWS if r is not None})

    def own(model, rows, instruction="Summarise", names=("review",)):
        return own_answers(model, rows, instruction, names, max_tokens=MAX_TOKENS)

    try:
        llm_sql.register(spark, models={"small": model_dir, "large": large}, model="small",
                         max_tokens=MAX_TOKENS, cache=False)
        df = spark.createDataFrame([(r,) for r in reviews], "review string").repartition(2)
        df.createOrReplaceTempView("distinct_reviews")
        got = spark.sql("SELECT review, llm('Summarise', struct(review)) AS a, "
                        "llm('Summarise', struct(review), named_struct('model', 'large')) AS b "
                        "FROM distinct_reviews").collect()
        got = sorted((r["review"], r["a"], r["b"]) for r in got)
        rows = [(r,) for r in reviews]
        assert [a for _, a, _ in got] == own(model_dir, rows)
        assert [b for _, _, b in got] == own(large, rows)
        assert [a for _, a, _ in got] != [b for _, _, b in got]
        hi = {r[0] for r in spark.sql("SELECT llm('Say hi') FROM distinct_reviews").collect()}
        assert hi == set(own(model_dir, [()], instruction="Say hi", names=()))
        with pytest.raises(Exception, match="unknown model 'huge'"):
            spark.sql("SELECT llm('Summarise', struct(review), named_struct('model', 'huge')) "
                      "FROM distinct_reviews").collect()
        # a cascade: threshold 0 keeps every answer of the first model, 1 sends every row on; between, each row
        # has one of the two models' own answers, and the statistics say how many each gave
        small, big = own(model_dir, rows), own(large, rows)
        for threshold, expected in ((0.0, small), (1.0, big), (0.5, None)):
            spark_mode.reset_stats(spark)
            got = spark.sql("SELECT review, llm('Summarise', struct(review), named_struct('model', "
                            f"array('small', 'large'), 'cascade_threshold', {threshold})) AS c "
                            "FROM distinct_reviews").collect()
            got = [c for _, c in sorted((r["review"], r["c"]) for r in got)]
            if expected is not None:
                assert got == expected
            assert all(g in (s, b) for g, s, b in zip(got, small, big))
            by_model = llm_sql.last_stats(spark).rows_by_model
            assert sum(by_model.values()) == len(reviews)
            assert by_model.get("large", 0) == (0 if threshold == 0.0 else len(reviews) if threshold == 1.0
                                                else by_model.get("large", 0))
    finally:  # the module's other tests use the one-model registration (the large server stops at exit)
        llm_sql.register(spark, model=model_dir, max_tokens=MAX_TOKENS, cache=False)


_WITH_RULES = r"""
import json, sys
import llm_sql
from llm_sql import spark_mode
spark = llm_sql.spark_session(model=sys.argv[1], master="local[2]", max_tokens=3, cache=False,
                              conf={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
                                    "spark.sql.shuffle.partitions": "2"})
assert spark_mode.extension_loaded(spark)
spark.createDataFrame(json.loads(sys.argv[2]), "id int, review string, style string").repartition(2) \
    .createOrReplaceTempView("reviews")
queries = [
    "SELECT id, llm('Summarise', struct(review, style)) AS s FROM reviews "
    "WHERE style <> 'Lager' AND llm_filter('Is the review positive?', struct(review))",
    "SELECT style, AVG(llm_score('How good is it?', struct(review))) AS a FROM reviews GROUP BY style",
    "SELECT id, llm_classify(struct(review), array('positive', 'negative')) AS c FROM reviews",
]
out = {}
for flag in ("true", "false"):
    spark.conf.set("llm_sql.optimize", flag)
    out[flag] = [sorted(map(repr, spark.sql(q).collect())) for q in queries]
    out[flag + "_plan"] = spark.sql(queries[0])._jdf.queryExecution().optimizedPlan().toString()
spark_mode.stop(spark)
spark.stop()
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_with_the_catalyst_rules_results_equal_rules_off(model_dir, tmp_path, env_without_this_python):
    """End to end in a fresh process started by the interpreter's path, with a PATH that does not lead to it
    (as IDEs and cron start Python): spark_session() with the extension; rules on == rules off."""
    import json

    try:
        from llm_sql import jvm

        jvm.extension_jar()
    except Exception as exc:  # no javac, or the rules do not build here
        pytest.skip(f"Catalyst extension unavailable: {exc}")
    script = tmp_path / "with_rules.py"
    script.write_text(_WITH_RULES)
    proc = subprocess.run([sys.executable, str(script), model_dir, json.dumps(ROWS)], capture_output=True,
                          text=True, timeout=300, env=env_without_this_python)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, proc.stderr[-3000:]
    out = json.loads(line[len("RESULT "):])
    assert out["true"] == out["false"]
    # the dedup aggregate is there with the rules on, and only then (this query has no aggregate of its own)
    assert "Aggregate" in out["true_plan"] and "Aggregate" not in out["false_plan"]

"""llm_agg: the LLM aggregate (udf/agg.py) in DuckDB, pandas and Spark SQL.

The real embedded engine on a tiny random checkpoint whose context is 256 tokens (greedy decoding, nonsense
answers): groups of one value, several, with NULLs (skipped; an all-NULL group is NULL), and one larger than the
context, folded level by level with every prompt inside the context; values that do not depend on row order, on
optimize on/off, or on the mode (DuckDB, pandas, Spark with and without the Catalyst rewrite); a failed group is
NULL with its reason while the others are answered. Fault injection (``_Faulty``) is a test-only wrapper.
"""
from __future__ import annotations

import random

import duckdb
import pandas as pd
import pytest

import llm_sql
from engine_backend.backends import make_backend
from engine_backend.backends.base import Backend, GenerationResult
from udf.agg import DEFAULT_CHUNK_CHARS, VALUES_FIELD, aggregate, budget_of, chunks_of, rewrite_duckdb
from udf.api import EvalSettings
from udf.arrow_calls import Target
from udf.batch import evaluate
from udf.functions import make_call

CONTEXT = 256
MAX_TOKENS = 8
INSTRUCTION = "Summarise the reviews"
BIG = [f"Review {i}: roasted malt, coffee and a long dry finish, number {i}." for i in range(40)]
ROWS = ([("one", "A single crisp lager.")]
        + [("few", "Hoppy and bitter."), ("few", None), ("few", "Citrus nose, dry finish."),
           ("few", "Hoppy and bitter.")]
        + [("nulls", None), ("nulls", None)]
        + [("big", v) for v in BIG]
        # the values of "few" without its NULL, in another order: the same answer
        + [("few_again", "Citrus nose, dry finish."), ("few_again", "Hoppy and bitter."),
           ("few_again", "Hoppy and bitter.")])
GROUPS = ("big", "few", "few_again", "nulls", "one")
QUERY = f"SELECT style, llm_agg('{INSTRUCTION}', review) AS s FROM beers GROUP BY style"


class _Faulty(Backend):
    """The embedded backend, recording every prompt, failing those that contain ``FAIL``."""

    name = "faulty"

    def __init__(self, inner):
        self.inner, self.engine, self.prompts = inner, inner.engine, []

    def generate(self, requests, progress=False):
        self.prompts.extend(r.prompt for r in requests)
        ok = [r for r in requests if "FAIL" not in r.prompt]
        answers = iter(self.inner.generate(ok, progress))
        return [next(answers) if "FAIL" not in r.prompt else GenerationResult.failed("injected fault")
                for r in requests]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from engine_backend.testing import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("agg") / "tiny", arch="llama",
                               max_position_embeddings=CONTEXT))


@pytest.fixture(scope="module")
def backend(model_dir):
    b = make_backend("embedded", model=model_dir)
    yield b
    b.close()


@pytest.fixture()
def faulty(backend):
    return _Faulty(backend)


def connect(backend, rows=ROWS, **options):
    con = llm_sql.register(duckdb.connect(), backend=backend, cache=False, progress=False, max_tokens=MAX_TOKENS,
                           **options)
    con.con.execute("CREATE TABLE beers (style VARCHAR, review VARCHAR)")
    con.con.executemany("INSERT INTO beers VALUES (?, ?)", rows)
    return con


def by_style(rows) -> dict:
    return {r[0]: r[1] for r in rows}


@pytest.fixture(scope="module")
def duck(backend):
    """The reference: QUERY's values in DuckDB mode, optimiser on."""
    con = connect(backend)
    try:
        return by_style(con.sql(QUERY).fetchall())
    finally:
        con.close()


# -- the SQL rewrite, no engine -----------------------------------------------------------------------------
def test_duckdb_rewrite():
    assert rewrite_duckdb("SELECT llm('x', review) FROM t") == "SELECT llm('x', review) FROM t"
    sql = rewrite_duckdb("SELECT style, llm_agg('x', review, {'max_tokens': 4}) AS s, "
                         "llm_agg('y', review) FILTER (WHERE stars > 2) FROM t GROUP BY style")
    assert "llm_agg(" not in sql.lower()
    assert "LLM_AGG_LIST('x', LIST(review), {'max_tokens': 4})" in sql
    assert "LLM_AGG_LIST('y', LIST(review) FILTER(WHERE stars > 2))" in sql
    with pytest.raises(ValueError, match="2 or 3 arguments"):
        rewrite_duckdb("SELECT llm_agg('x', a, b, c) FROM t")
    with pytest.raises(ValueError, match="window"):
        rewrite_duckdb("SELECT llm_agg('x', a) OVER (PARTITION BY b) FROM t")


def test_chunking_is_deterministic_and_fits(backend):
    """Chunks by tokens fit the context less max_tokens, follow the sorted values, and any two partial answers
    fit one prompt; by characters when asked (or with no tokenizer)."""
    from udf.agg import _answer_item, _item
    from udf.prompts import prompt_head

    target = Target(backend)
    budget = budget_of(target, {"max_tokens": MAX_TOKENS}, MAX_TOKENS)
    assert (budget.unit, budget.limit) == ("tokens", CONTEXT - MAX_TOKENS)
    head = prompt_head("llm", INSTRUCTION)
    items = sorted((_item(v, 4000) for v in BIG), key=lambda it: it.text)
    chunks = chunks_of(items, head, VALUES_FIELD, budget, combine=False)
    assert len(chunks) > 2 and [it for c in chunks for it in c] == items
    from udf.agg import _prompt

    assert all(budget.count(_prompt(head, VALUES_FIELD, c)) <= budget.limit for c in chunks)
    long = [_answer_item("word " * 400), _answer_item("other " * 400)]
    combined = chunks_of(long, head, "partial answers", budget, combine=True)
    assert len(combined) == 1 and "truncated" in combined[0][0].text
    assert budget_of(target, {"chunk_chars": 300}, MAX_TOKENS).unit == "characters"
    assert budget_of(Target(object()), {}, MAX_TOKENS).limit == DEFAULT_CHUNK_CHARS


# -- DuckDB ---------------------------------------------------------------------------------------------------
def test_groups_in_duckdb(backend, faulty, duck):
    assert set(duck) == set(GROUPS)
    assert duck["nulls"] is None  # all NULL: no call
    assert all(isinstance(duck[g], str) for g in ("one", "few", "few_again", "big"))
    assert duck["few"] == duck["few_again"]  # NULLs skipped, order irrelevant
    # a group that fits one prompt is llm(instruction, values) over its sorted values
    settings = EvalSettings(dedup=False, reorder=False, result_cache=False, progress=False,
                            defaults={"max_tokens": MAX_TOKENS, "max_field_chars": 10**12})
    plain = evaluate(make_call("llm", INSTRUCTION, [VALUES_FIELD]),
                     [(["Citrus nose, dry finish.", "Hoppy and bitter.", "Hoppy and bitter."],),
                      (["A single crisp lager."],)], backend, settings=settings).values
    assert [duck["few"], duck["one"]] == plain
    # the big group went through levels, every prompt within the context; the same values as without the wrapper
    con = connect(faulty)
    try:
        assert by_style(con.sql(QUERY).fetchall()) == duck
        stats = llm_sql.last_stats(con)
    finally:
        con.close()
    tok = backend.engine.tokenizer
    assert max(len(tok.encode(p)) for p in faulty.prompts) <= CONTEXT - MAX_TOKENS
    assert sum('"partial answers"' in p for p in faulty.prompts) >= 2  # at least two levels above the values
    assert stats.rows_in == len(GROUPS) and stats.null_inputs == 1 and stats.errors == 0
    assert stats.llm_calls == len(faulty.prompts) > len(GROUPS)


def test_deterministic_optimize_off_and_row_order(backend, duck):
    shuffled = list(ROWS)
    random.Random(7).shuffle(shuffled)
    for optimize in (True, False):
        con = connect(backend, shuffled, optimize=optimize)
        try:
            assert by_style(con.sql(QUERY).fetchall()) == duck
        finally:
            con.close()


def test_with_other_llm_calls_and_no_group_by(backend, duck):
    con = connect(backend)
    try:
        # a per-row LLM call lifted as a stage in the same query; a query without GROUP BY is one group
        rows = con.sql(f"SELECT style, count(*) AS n, llm_agg('{INSTRUCTION}', review) AS s, "
                       f"max(llm('Name it', style, {{'max_tokens': 2}})) AS m FROM beers GROUP BY style").fetchall()
        assert {r[0]: r[2] for r in rows} == duck and {r[0]: r[1] for r in rows}["big"] == len(BIG)
        one = con.sql(f"SELECT llm_agg('{INSTRUCTION}', review) FROM beers WHERE style IN ('few', 'nulls')").fetchall()
        assert one == [(duck["few"],)]
        assert con.sql(f"SELECT llm_agg('{INSTRUCTION}', review) FROM beers WHERE false").fetchall() == [(None,)]
        short = con.sql(f"SELECT llm_agg('{INSTRUCTION}', review, {{'max_tokens': 2}}) FROM beers "
                        f"WHERE style = 'one'").fetchall()
        assert llm_sql.last_stats(con).generated_tokens <= 2 and short[0][0] is not None
    finally:
        con.close()


def test_errors_per_group(backend, faulty):
    rows = ROWS + [("bad", "FAIL here"), ("bad", "fine"), ("big_bad", "FAIL too")] + [("big_bad", v) for v in BIG]
    con = connect(faulty, rows)
    try:
        got = by_style(con.sql(QUERY).fetchall())
        stats = llm_sql.last_stats(con)
    finally:
        con.close()
    assert got["bad"] is None and got["big_bad"] is None  # one failed part fails its group
    assert isinstance(got["one"], str) and isinstance(got["big"], str)
    assert stats.errors == 2 and any("injected fault" in r and "level 0" in r for r in stats.error_reasons)
    con = connect(faulty, rows, on_error="raise")
    try:
        with pytest.raises(Exception, match="injected fault"):
            con.sql(QUERY).fetchall()
    finally:
        con.close()
    # chunks by characters may not fit the context: the engine refuses that group's prompts, the others are answered
    con = connect(backend, ROWS + [("long", "x" * 3000)])
    try:
        got = by_style(con.sql(f"SELECT style, llm_agg('{INSTRUCTION}', review, {{'chunk_chars': 4000}}) "
                               f"FROM beers GROUP BY style").fetchall())
        assert got["long"] is None and isinstance(got["one"], str)
        assert any("level 0" in r and "context" in r for r in llm_sql.last_stats(con).error_reasons)
        # a context too small for the prompt and its answer: every group NULL, said why
        got = by_style(con.sql(f"SELECT style, llm_agg('{INSTRUCTION}', review, {{'max_tokens': 240}}) "
                               f"FROM beers GROUP BY style").fetchall())
        assert all(v is None for v in got.values())
        assert "the prompt without any value" in llm_sql.last_stats(con).error_reasons[0]
        with pytest.raises(Exception, match="cascade"):
            con.sql("SELECT llm_agg('x', review, {'model': ['a', 'b']}) FROM beers").fetchall()
    finally:
        con.close()


def test_result_cache(backend, tmp_path):
    for run in range(2):
        con = llm_sql.register(duckdb.connect(), backend=backend, cache=True, cache_path=str(tmp_path / "c.sqlite"),
                               progress=False, max_tokens=MAX_TOKENS)
        con.con.execute("CREATE TABLE beers (style VARCHAR, review VARCHAR)")
        con.con.executemany("INSERT INTO beers VALUES (?, ?)", [r for r in ROWS if r[0] in ("big", "one")])
        try:
            con.sql(QUERY).fetchall()
            s = llm_sql.last_stats(con)
        finally:
            con.close()
    assert s.llm_calls == 0 and s.cache_hits > 2


def test_chunk_chars_levels(backend):
    """With chunk_chars every prompt is at most that many characters; the levels still end in one answer."""
    faulty = _Faulty(backend)
    out = aggregate(INSTRUCTION, [BIG], lambda m: Target(faulty), settings=EvalSettings(result_cache=False,
                                                                                      progress=False),
                    options={"chunk_chars": 400, "max_tokens": 4, "system": ""})
    assert out.errors == [None] and isinstance(out.values[0], str) and out.stats.llm_calls > 4
    assert max(map(len, faulty.prompts)) <= 400 and any("partial answers" in p for p in faulty.prompts)


# -- pandas ---------------------------------------------------------------------------------------------------
def test_pandas_agg_equals_sql(backend, model_dir, duck):
    import llm_sql.pandas as lp

    df = pd.DataFrame(ROWS, columns=["style", "review"])
    sess = lp.session(backend=backend, model=model_dir, cache=False, progress=False, max_tokens=MAX_TOKENS)
    try:
        out = df.llm.agg(INSTRUCTION, "review", by="style", into="s", session=sess)
        assert list(out["style"]) == sorted(GROUPS)
        assert dict(zip(out["style"], out["s"])) == duck
        whole = df[df["style"] == "one"].llm.agg(INSTRUCTION, "review", session=sess)
        assert list(whole["llm_agg"]) == [duck["one"]]
        assert lp.last_stats(out).rows_in == len(GROUPS)
        import os

        os.environ.setdefault("MODIN_ENGINE", "Python")  # the local engine: in-process partitions
        try:
            import modin.pandas as mpd
        except ImportError:
            return
        mout = mpd.DataFrame(df).llm.agg(INSTRUCTION, "review", by="style", into="s", session=sess)
        assert dict(zip(mout["style"], mout["s"])) == duck
    finally:
        sess.close()


# -- Spark ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spark(model_dir, extension_spark):
    with extension_spark(model_dir, "llm-sql-agg-test", max_tokens=MAX_TOKENS) as session:
        session.createDataFrame(ROWS, "style string, review string").repartition(3).createOrReplaceTempView("beers")
        yield session


def test_spark_agrees_with_duckdb(spark, duck):
    """The Catalyst rewrite (llm_agg_list over collect_list: every group of a batch together) and the plain
    grouped aggregate (one group a call, optimize=false) give DuckDB's values on the same rows."""
    from llm_sql import spark_mode

    plan = spark._jsparkSession.sql(QUERY).queryExecution().analyzed().toString()
    assert "llm_agg_list" in plan and "collect_list" in plan
    spark_mode.reset_stats(spark)
    assert by_style(spark.sql(QUERY).collect()) == duck
    rewritten = llm_sql.last_stats(spark)
    assert rewritten.errors == 0 and rewritten.null_inputs == 1
    spark.conf.set("llm_sql.optimize", "false")
    try:
        spark_mode.reset_stats(spark)
        assert by_style(spark.sql(QUERY).collect()) == duck
        assert llm_sql.last_stats(spark).batches > rewritten.batches  # one group a call
    finally:
        spark.conf.set("llm_sql.optimize", "true")
    # beside other aggregates, and written over collect_list directly
    rows = spark.sql(f"SELECT style, count(*) AS n, llm_agg('{INSTRUCTION}', review) AS s FROM beers "
                     f"GROUP BY style").collect()
    assert {r["style"]: r["s"] for r in rows} == duck
    direct = spark.sql(f"SELECT llm_agg_list('{INSTRUCTION}', collect_list(review)) AS s FROM beers "
                       f"WHERE style = 'few'").collect()
    assert direct[0]["s"] == duck["few"]


def test_spark_chunk_chars_and_errors(spark, backend):
    """chunk_chars gives the same chunks on every backend: Spark equals DuckDB on the same engine server; a group
    whose prompts do not fit the context is NULL with its reason, the others are answered."""
    from llm_sql import spark_mode

    info = spark_mode.server_info(spark)
    server = make_backend("openai", base_url=info["url"], api_key=info["token"])
    query = (f"SELECT style, llm_agg('{INSTRUCTION}', review, {{opts}}) AS s FROM beers GROUP BY style")
    try:
        con = connect(server)
        try:
            want = by_style(con.sql(query.format(opts="{'chunk_chars': 400, 'system': ''}")).fetchall())
        finally:
            con.close()
        got = by_style(spark.sql(query.format(opts="named_struct('chunk_chars', 400, 'system', '')")).collect())
        assert got == want and isinstance(got["big"], str)
    finally:
        server.close()
    spark_mode.reset_stats(spark)
    got = by_style(spark.sql(query.format(opts="named_struct('chunk_chars', 4000)")).collect())
    stats = llm_sql.last_stats(spark)
    assert got["big"] is None and isinstance(got["one"], str)
    assert stats.errors >= 1 and any("level 0" in r for r in stats.error_reasons)

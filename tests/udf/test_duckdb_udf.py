"""The DuckDB fallback UDFs: registered functions give what udf.batch.evaluate gives, NULLs handled.

Real DuckDB, real embedded engine on a tiny random checkpoint (nonsense answers: only equalities).
"""
from __future__ import annotations

import duckdb
import pytest

from llm_sql.cache import ResultCache
from udf.api import EvalSettings
from udf.arrow_calls import Target
from udf.batch import evaluate
from udf.duckdb_udf import register_udfs
from udf.functions import make_call

REVIEWS = ["Great beer, lovely amber color", "Too bitter, thin finish", None, "Great beer, lovely amber color",
           "Skunky and stale", "Too bitter, thin finish", "Crisp and clean"]


@pytest.fixture()
def env(backend):
    con = duckdb.connect()
    con.execute("CREATE TABLE t (id INTEGER, review VARCHAR, stars INTEGER, day DATE, raw BLOB)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?)",
                    [(i, r, None if r is None else len(r) % 5 + 1, None, None) for i, r in enumerate(REVIEWS)])
    settings = EvalSettings(progress=False)
    seen = {"stats": [], "outputs": [], "models": []}

    def route(model):
        seen["models"].append(model)
        return Target(backend)

    def on_output(call, out, target):
        seen["stats"].append(out.stats)
        seen["outputs"].append((call, out))

    register_udfs(con, route, settings, on_output=on_output)
    yield con, settings, seen
    con.close()


def _col(con, sql):
    return [r[0] for r in con.sql(sql).fetchall()]


def test_filter_equals_evaluate(env, backend):
    con, settings, seen = env
    got = _col(con, "SELECT llm_filter('sentiment', review) FROM t ORDER BY id")
    ref = evaluate(make_call("llm_filter", "sentiment", ("input",)), [(r,) for r in REVIEWS], backend,
                   settings=settings).values
    assert got == ref
    assert got[2] is None and all(isinstance(v, bool) for i, v in enumerate(got) if i != 2)
    st = seen["stats"][-1]
    assert st.null_inputs == 1 and st.llm_calls == 4  # deduplicated within the chunk
    assert seen["models"][-1] is None


def test_filter_in_where(env):
    con, _, _ = env
    kept = _col(con, "SELECT id FROM t WHERE llm_filter('sentiment', review) ORDER BY id")
    flags = _col(con, "SELECT llm_filter('sentiment', review) FROM t ORDER BY id")
    assert kept == [i for i, f in enumerate(flags) if f]


def test_all_functions_and_types(env, backend):
    con, settings, _ = env
    scores = _col(con, "SELECT llm_score('sentiment', review, stars) FROM t ORDER BY id")
    assert all(v is None or 1 <= v <= 5 for v in scores) and scores[2] is None
    assert con.execute("SELECT typeof(llm_score('x', review)) FROM t LIMIT 1").fetchall()[0][0] == "INTEGER"
    labels = _col(con, "SELECT llm_classify(review, ['positive', 'negative']) FROM t ORDER BY id")
    assert all(v in ("positive", "negative") for i, v in enumerate(labels) if i != 2) and labels[2] is None
    ref = evaluate(make_call("llm_classify", None, ("input",), ["positive", "negative"]),
                   [(r,) for r in REVIEWS], backend, settings=settings).values
    assert labels == ref
    text = _col(con, "SELECT llm('summarize', review, {'max_tokens': 3}) FROM t ORDER BY id")
    assert all(isinstance(v, str) for i, v in enumerate(text) if i != 2)
    ref = evaluate(make_call("llm", "summarize", ("input",), options={"max_tokens": 3}),
                   [(r,) for r in REVIEWS], backend, settings=settings).values
    assert text == ref


def test_named_fields_struct_and_multiple_fields(env, backend):
    con, settings, seen = env
    got = _col(con, "SELECT llm_filter('sentiment', {'review': review, 'stars': stars}) FROM t ORDER BY id")
    call, _ = seen["outputs"][-1]
    assert call.field_names == ("review", "stars")
    rows = con.sql("SELECT review, stars FROM t ORDER BY id").fetchall()
    assert got == evaluate(make_call("llm_filter", "sentiment", ("review", "stars")), rows, backend,
                           settings=settings).values
    _col(con, "SELECT llm_filter('sentiment', review, stars, day) FROM t ORDER BY id")
    call, out = seen["outputs"][-1]
    assert call.field_names == ("input1", "input2", "input3")
    assert out.values[2] is None  # all three NULL


def test_options_struct_and_model(env):
    con, _, seen = env
    _col(con, "SELECT llm('hi', review, {'max_tokens': 2, 'model': 'other'}) FROM t")
    call, out = seen["outputs"][-1]
    assert dict(call.options) == {"max_tokens": 2, "model": "other"}
    assert seen["models"][-1] == "other"
    assert out.stats.generated_tokens <= 2 * out.stats.llm_calls
    _col(con, "SELECT llm_classify(review, ['a', 'b'], {'temperature': 0.0}) FROM t")
    call, _ = seen["outputs"][-1]
    assert call.labels == ("a", "b") and dict(call.options) == {"temperature": 0.0}


def test_errors_are_clear(env):
    con, _, _ = env
    with pytest.raises(duckdb.Error, match="unknown option 'max_token'.*max_tokens"):
        con.sql("SELECT llm('hi', review, {'max_token': 2}) FROM t").fetchall()
    with pytest.raises(duckdb.Error, match="'max_tokens' must be a positive integer"):
        con.sql("SELECT llm('hi', review, {'max_tokens': 'x'}) FROM t").fetchall()
    with pytest.raises(duckdb.Error, match="duplicates"):
        con.sql("SELECT llm_classify(review, ['a', 'a']) FROM t").fetchall()
    with pytest.raises(duckdb.Error, match="empty"):
        con.sql("SELECT llm_classify(review, ['a', '']) FROM t").fetchall()
    with pytest.raises(duckdb.Error, match="labels"):
        con.sql("SELECT llm_classify(review) FROM t").fetchall()
    with pytest.raises(duckdb.Error, match="at least one field"):
        con.sql("SELECT llm_classify(['a', 'b']) FROM t").fetchall()


def test_null_instruction_blob_and_context_failure(env):
    con, _, seen = env
    assert _col(con, "SELECT llm_filter(NULL, review) FROM t") == [None] * len(REVIEWS)
    blob = _col(con, "SELECT llm_filter('x', '\\xFF\\xFEok'::BLOB)")
    assert isinstance(blob[0], bool)
    long = _col(con, "SELECT llm_filter('x', repeat('word ', 6000), {'max_field_chars': 100000})")
    assert long == [None]
    _, out = seen["outputs"][-1]
    assert "context" in out.errors[0]


def test_result_cache_through_udf(backend, tmp_path):
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT * FROM (VALUES ('a'), ('b'), ('a')) v(x)")
    stats = []
    cache = ResultCache(tmp_path / "r.sqlite")
    register_udfs(con, lambda m: Target(backend, "tiny"), EvalSettings(progress=False), result_cache=cache,
                  on_output=lambda call, out, target: stats.append(out.stats))
    first = _col(con, "SELECT llm_score('sentiment', x) FROM t")
    second = _col(con, "SELECT llm_score('sentiment', x) FROM t")
    assert first == second and stats[0].llm_calls == 2 and stats[1].llm_calls == 0 and stats[1].cache_hits == 2
    register_udfs(con, lambda m: Target(backend), EvalSettings(progress=False))  # re-registering replaces
    assert _col(con, "SELECT llm_score('sentiment', x) FROM t") == first

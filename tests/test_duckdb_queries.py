"""Optimised DuckDB queries return exactly what the plain per-row evaluation returns.

The real embedded engine on a tiny random checkpoint (greedy decoding), one engine for the module. The plain
run is ``register(con, optimize=False, cache=False)``: every call through the per-row UDF, no dedup, no
reordering. ``reorder_fields=False`` keeps each prompt's written field order (the optimiser may otherwise write
a multi-field prompt in another order, which changes a random model's answer; see ``udf.batch``).
"""
from __future__ import annotations

import duckdb
import pytest

import llm_sql
from engine_backend.backends import Backend, BackendError, GenerationResult, make_backend

REVIEWS = ["Crisp and clean, lovely hops.", "Tasted like wet cardboard.", "Rich coffee notes, great stout.",
           "Flat and overly sweet.", "Bright citrus, juicy and balanced."]
STYLES = ["IPA", "Stout", "Lager"]


def fill(con: duckdb.DuckDBPyConnection) -> None:
    rows = []
    for i in range(30):  # 30 rows, 5 distinct reviews x 3 styles: plenty of duplicates
        review = None if i % 11 == 7 else REVIEWS[i % 5]
        style = None if i % 13 == 12 else STYLES[i % 3]
        rows.append((i, review, style, i % 5 + 1))
    con.execute("CREATE TABLE reviews (id INTEGER, review VARCHAR, style VARCHAR, stars INTEGER)")
    con.executemany("INSERT INTO reviews VALUES (?, ?, ?, ?)", rows)
    con.execute("CREATE TABLE regions (style VARCHAR, region VARCHAR)")
    con.executemany("INSERT INTO regions VALUES (?, ?)", [("IPA", "west coast"), ("Stout", "ireland"),
                                                           ("Lager", "bavaria"), ("Sour", "belgium")])
    con.execute("CREATE TABLE empty_reviews AS SELECT * FROM reviews WHERE false")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from engine_backend.testing import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("dq") / "tiny", arch="llama"))


@pytest.fixture(scope="module")
def backend(model_dir):
    b = make_backend("embedded", model=model_dir)
    yield b
    b.close()


COMMON = dict(cache=False, progress=False, max_tokens=3, reorder_fields=False)


@pytest.fixture(scope="module")
def dbs(backend, model_dir):
    con_opt, con_plain = duckdb.connect(), duckdb.connect()
    fill(con_opt)
    fill(con_plain)
    opt = llm_sql.register(con_opt, backend=backend, model=model_dir, **COMMON)
    plain = llm_sql.register(con_plain, backend=backend, model=model_dir, optimize=False, **COMMON)
    yield opt, plain
    con_opt.close()
    con_plain.close()


def rows(rel) -> list:
    return sorted(rel.fetchall(), key=repr)


LIFTED = {
    "projection": "SELECT id, llm('Summarise the review', review) AS s FROM reviews",
    "filter": "SELECT id, style FROM reviews WHERE llm_filter('Is the review positive?', review)",
    "filter_projection": ("SELECT id, llm_classify(review, ['positive', 'negative']) AS c FROM reviews "
                          "WHERE stars >= 2 AND llm_filter('Is it about beer?', review)"),
    "two_filters": ("SELECT id FROM reviews WHERE llm_filter('Is the review positive?', review) "
                    "AND llm_filter('Is this style dark?', style)"),
    "two_calls_multi_field": "SELECT id, llm('Name it', style), llm_score('Rate', review, style) FROM reviews",
    "group_by_avg": ("SELECT style, AVG(llm_score('Rate the review from 1 to 5', review)) AS score, COUNT(*) "
                     "FROM reviews GROUP BY style"),
    "group_by_llm": "SELECT llm_filter('Is it positive?', review) AS pos, COUNT(*) FROM reviews GROUP BY pos",
    "join": ("SELECT r.id, g.region, llm('Describe', r.style, g.region) FROM reviews r JOIN regions g "
             "ON r.style = g.style WHERE llm_filter('Is it positive?', r.review)"),
    "cte": ("WITH good AS (SELECT * FROM reviews WHERE llm_filter('Is it positive?', review)) "
            "SELECT style, COUNT(*), MAX(llm('Summarise', review)) FROM good GROUP BY style"),
    "in_subquery": ("SELECT id FROM reviews WHERE style IN "
                    "(SELECT style FROM regions WHERE llm_filter('Is this region cold?', region))"),
    "correlated_exists": ("SELECT g.region FROM regions g WHERE EXISTS (SELECT 1 FROM reviews r "
                          "WHERE r.style = g.style AND llm_filter('Is it positive?', r.review))"),
    "scalar_subquery": ("SELECT g.region, (SELECT COUNT(*) FROM reviews r WHERE r.style = g.style AND "
                        "llm_score('Rate', r.review) >= 3) AS n FROM regions g"),
    "nulls_multi_field": "SELECT id, llm('Compare', review, style) FROM reviews WHERE review IS NULL OR style IS NULL OR id < 5",
    "empty_projection": "SELECT llm('Summarise', review) FROM empty_reviews",
    "empty_filter": "SELECT * FROM empty_reviews WHERE llm_filter('ok?', review)",
    "empty_agg": "SELECT AVG(llm_score('Rate', review)) FROM empty_reviews",
    "nested_calls": "SELECT id, llm_filter('Is it positive?', llm('Summarise', review)) FROM reviews WHERE id < 8",
    "having_avg": "SELECT style FROM reviews GROUP BY style HAVING AVG(llm_score('Rate', review)) >= 3",
    "order_by_llm": "SELECT id FROM reviews WHERE id < 10 ORDER BY llm_score('Rate', review), id",
    "join_on_llm": ("SELECT r.id, g.region FROM reviews r JOIN regions g ON llm_filter('Match?', r.style, g.region) "
                    "WHERE r.id < 6"),  # an inner join's LLM condition is a stage over the distinct pairs
    "ctas": None,  # see test_create_table_as
}
FALLBACK = {
    "window": "SELECT id, SUM(llm_score('Rate', review)) OVER (PARTITION BY style ORDER BY id) FROM reviews",
    "left_join_on_llm": ("SELECT r.id, g.region FROM reviews r LEFT JOIN regions g "
                         "ON llm_filter('Match?', r.style, g.region) WHERE r.id < 6"),
    "having_over_aggregate": "SELECT style FROM reviews GROUP BY style HAVING llm_filter('Is it good?', MAX(review))",
    "limit_without_order": "SELECT COUNT(*) FROM (SELECT id FROM reviews WHERE llm_filter('ok?', review) LIMIT 3)",
    "setop_order_by": ("SELECT review AS x FROM reviews UNION SELECT region FROM regions "
                       "ORDER BY llm_score('Rate', x), x"),
}


@pytest.mark.parametrize("name", [k for k, v in LIFTED.items() if v])
def test_lifted_queries_equal_plain(dbs, name):
    opt, plain = dbs
    sql = LIFTED[name]
    got = opt.sql(sql)
    stats = llm_sql.last_stats(opt)
    assert stats.fallback_reason is None, stats.fallback_reason
    assert stats.stages, "expected the rewriter to lift the calls"
    assert rows(got) == rows(plain.sql(sql))
    assert llm_sql.last_stats(plain).optimized is False


def test_order_by_is_kept(dbs):
    opt, plain = dbs
    sql = LIFTED["order_by_llm"]
    assert opt.sql(sql).fetchall() == plain.sql(sql).fetchall()


@pytest.mark.parametrize("name", list(FALLBACK))
def test_unsupported_shapes_fall_back_and_agree(dbs, name):
    opt, plain = dbs
    sql = FALLBACK[name]
    assert rows(opt.sql(sql)) == rows(plain.sql(sql))
    plan = llm_sql.explain(opt, sql, count=False).plan
    assert plan.fallbacks


def test_create_table_as(dbs):
    opt, plain = dbs
    sql = "CREATE OR REPLACE TABLE summary AS SELECT id, llm('Summarise', review) AS s FROM reviews WHERE id < 6"
    opt.sql(sql)
    plain.sql(sql)
    assert llm_sql.last_stats(opt).stages
    assert rows(opt.sql("SELECT * FROM summary")) == rows(plain.sql("SELECT * FROM summary"))


def test_dedup_makes_fewer_calls_than_rows(dbs):
    opt, plain = dbs
    sql = "SELECT id, llm_filter('Is it positive?', review, style) FROM reviews"
    opt.sql(sql).fetchall()
    s = llm_sql.last_stats(opt)
    assert s.rows_in == 30 and 0 < s.llm_calls == s.distinct_inputs < s.rows_in
    plain.sql(sql).fetchall()
    p = llm_sql.last_stats(plain)
    assert p.llm_calls > s.llm_calls and p.fallback_chunks >= 1


def test_last_stats_fields(dbs):
    opt, _ = dbs
    opt.sql("SELECT llm('Summarise', review) FROM reviews").fetchall()
    d = llm_sql.last_stats(opt).as_dict()
    for key in ("rows_in", "llm_calls", "cache_hits", "prompt_tokens", "cached_prompt_tokens", "prefix_hit_rate",
                "generated_tokens", "solve_seconds", "llm_seconds", "total_seconds", "stages"):
        assert key in d, key
    assert d["prompt_tokens"] > 0 and d["total_seconds"] > 0 and len(d["stages"]) == 1
    assert d["stages"][0]["distinct_inputs"] <= 5


def test_explain_shows_stages_without_calling_the_llm(dbs, backend):
    opt, _ = dbs
    before = backend.stats()["requests"]
    ex = llm_sql.explain(opt, LIFTED["filter_projection"])
    text = str(ex)
    assert "stage 0 [filter]" in text and "stage 1 [projection]" in text and "rewritten SQL" in text
    assert "est. prefix hit" in text and "field order" in text
    assert ex.stages[0]["distinct_inputs"] == 4  # non-NULL reviews among stars >= 2 ... five reviews, one at stars 1
    assert backend.stats()["requests"] == before
    assert "no LLM calls" in str(llm_sql.explain(opt, "SELECT 1"))


def test_explain_analyze_runs_an_aggregate_within_its_statistics(dbs, backend, monkeypatch):
    """llm_agg is no stage, yet the run is a query with LLM calls: answered while its statistics are open."""
    opt, _ = dbs
    open_when_sent = []
    generate = backend.generate

    def recording(*args, **kwargs):
        open_when_sent.append(opt.session.current is not None)
        return generate(*args, **kwargs)

    monkeypatch.setattr(backend, "generate", recording)
    ex = llm_sql.explain(opt, "SELECT style, llm_agg('Summarise the reviews', review) FROM reviews GROUP BY style",
                         analyze=True)
    assert ex.result_rows == 4 and ex.actual is llm_sql.last_stats(opt) and ex.actual.llm_calls > 0
    assert open_when_sent and all(open_when_sent)


def test_queries_without_llm_pass_through(dbs):
    opt, _ = dbs
    assert opt.sql("SELECT COUNT(*) FROM reviews").fetchall() == [(30,)]
    assert opt.execute("SELECT 40 + 2").fetchall() == [(42,)]
    assert llm_sql.sql(opt.con, "SELECT 1").fetchall() == [(1,)]


def test_execute_goes_through_the_optimiser(dbs):
    opt, plain = dbs
    sql = LIFTED["filter"]
    assert sorted(opt.execute(sql).fetchall()) == sorted(plain.sql(sql).fetchall())
    assert llm_sql.last_stats(opt.con).stages


def test_switches_keep_answers(backend, model_dir):
    con = duckdb.connect()
    fill(con)
    sql = "SELECT id, llm('Summarise', review) FROM reviews WHERE llm_filter('Is it positive?', review)"
    ref, calls = None, {}
    for name, opts in (("all", dict()), ("no_dedup", dict(dedup=False)), ("no_reorder", dict(reorder=False))):
        db = llm_sql.register(con, backend=backend, **COMMON, **opts)
        got = rows(db.sql(sql))
        ref = ref or got
        assert got == ref, opts
        calls[name] = llm_sql.last_stats(con).llm_calls
    assert calls["no_dedup"] > calls["all"] == calls["no_reorder"]
    con.close()


def test_result_cache_answers_repeats(backend, tmp_path):
    con = duckdb.connect()
    fill(con)
    db = llm_sql.register(con, backend=backend, progress=False, max_tokens=3, cache=True,
                          cache_path=str(tmp_path / "r.sqlite"))
    sql = "SELECT llm('Summarise', review) FROM reviews"
    first = rows(db.sql(sql))
    assert llm_sql.last_stats(con).cache_hits == 0
    assert rows(db.sql(sql)) == first
    s = llm_sql.last_stats(con)
    assert s.cache_hits > 0 and s.llm_calls == 0
    con.close()


def test_register_errors(model_dir, tmp_path):
    con = duckdb.connect()
    with pytest.raises(TypeError, match="no_such_option"):
        llm_sql.register(con, model=model_dir, no_such_option=1)
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        llm_sql.register(con, model=str(tmp_path / "missing"))
    with pytest.raises(BackendError, match="127.0.0.1:9"):
        llm_sql.register(con, backend="openai", base_url="http://127.0.0.1:9", cache=False,
                         backend_options={"max_retries": 0, "timeout": 2})
    with pytest.raises(ValueError, match="not registered"):
        llm_sql.last_stats(duckdb.connect())


def test_llm_predicates_ordered_by_counted_cost(dbs):
    opt, plain = dbs
    sql = ("SELECT id FROM reviews WHERE llm_filter('Positive?', review) "
           "AND llm_filter('Is this beer style a dark one, like a stout or a porter?', style)")
    plan = llm_sql.explain(opt, sql, count=False).plan
    # 3 distinct styles against 5 distinct reviews outweighs the longer instruction
    assert [s.field_names for s in plan.stages] == [("style",), ("review",)]
    assert plan.stages[1].depends_on == (0,)
    assert rows(opt.sql(sql)) == rows(plain.sql(sql))


class _FailSome(Backend):
    """Fault injection: requests whose prompt mentions ``Flat`` fail; the rest go to the real engine."""

    name = "fail-some"

    def __init__(self, inner):
        self.inner = inner

    def generate(self, requests, progress=False):
        out = self.inner.generate(requests)
        return [GenerationResult.failed("injected failure") if "Flat" in str(r.prompt) else o
                for r, o in zip(requests, out)]


def test_row_failures_are_null_with_a_reason(backend):
    con = duckdb.connect()
    fill(con)
    db = llm_sql.register(con, backend=_FailSome(backend), **COMMON)
    got = dict(db.sql("SELECT id, llm('Summarise', review) FROM reviews").fetchall())
    stats = llm_sql.last_stats(con)
    flat = [i for i, r in con.execute("SELECT id, review FROM reviews").fetchall() if r and r.startswith("Flat")]
    assert flat and all(got[i] is None for i in flat)
    assert any(v is not None for v in got.values())
    assert stats.errors == 1 and any("injected failure" in e for e in stats.error_reasons)  # one distinct input
    db = llm_sql.register(con, backend=_FailSome(backend), on_error="raise", **COMMON)
    with pytest.raises(Exception, match="injected failure"):
        db.sql("SELECT id, llm('Summarise', review) FROM reviews").fetchall()
    con.close()


def test_register_without_a_model_uses_the_tiny_default(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    con = duckdb.connect()
    db = llm_sql.register(con, cache=False, progress=False, max_tokens=2)
    assert "answers nonsense" in capsys.readouterr().err
    assert (tmp_path / "llm-sql" / "models" / "tiny-llama" / "config.json").is_file()
    assert db.sql("SELECT llm_filter('ok?', 'a') AS x").fetchall()[0][0] in (True, False)
    db.close()


def test_a_misjudged_shape_runs_the_original_on_the_fallback_udfs(dbs):
    opt, plain = dbs
    # DuckDB lets WHERE read a select alias; the stage SQL cannot, so the whole query falls back
    sql = "SELECT upper(review) AS u FROM reviews WHERE llm_filter('Is it positive?', u)"
    assert rows(opt.sql(sql)) == rows(plain.sql(sql))
    s = llm_sql.last_stats(opt)
    assert s.fallback_reason and "did not run" in s.fallback_reason and s.fallback_chunks >= 1

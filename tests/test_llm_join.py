"""LLM predicates in join conditions (optimizer/rules/joins.py) through DuckDB: the optimised join asks each distinct
pair once, after the cheap conditions, and its rows equal the plain nested loop (every pair through the UDF)."""
from __future__ import annotations

import duckdb
import pytest

import llm_sql

REVIEWS = [(1, "citrus and pine, very hoppy", "IPA"), (2, "roasted coffee and chocolate", "Stout"),
           (3, "citrus and pine, very hoppy", "IPA"), (4, "bready malt, clean finish", "Lager"),
           (5, None, "Sour"), (6, "tart cherry, funky", "Sour")]
FLAVOURS = [("citrus", "IPA"), ("coffee", "Stout"), ("cherry", "Sour"), ("malt", "Lager")]
COMMON = dict(cache=False, progress=False)
JOIN = ("SELECT r.id, f.flavour FROM reviews r JOIN flavours f "
        "ON llm_filter('Does the review mention the flavour?', r.review, f.flavour){extra} ORDER BY r.id, f.flavour")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from engine_backend.testing import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("join") / "tiny", arch="llama"))


@pytest.fixture()
def con():
    c = duckdb.connect()
    c.execute("CREATE TABLE reviews (id INTEGER, review VARCHAR, style VARCHAR)")
    c.executemany("INSERT INTO reviews VALUES (?, ?, ?)", REVIEWS)
    c.execute("CREATE TABLE flavours (flavour VARCHAR, style VARCHAR)")
    c.executemany("INSERT INTO flavours VALUES (?, ?)", FLAVOURS)
    yield c
    c.close()


def run(con, model_dir, sql, **opts):
    db = llm_sql.register(con, model=model_dir, **COMMON, **opts)
    return db.sql(sql).fetchall(), llm_sql.last_stats(con)


@pytest.mark.parametrize("extra", ["", " AND r.style = f.style", " AND f.flavour <> 'malt' WHERE r.id > 1"])
def test_join_equals_the_nested_loop(con, model_dir, extra):
    sql = JOIN.format(extra=extra)
    rows, stats = run(con, model_dir, sql)
    plain, plain_stats = run(con, model_dir, sql, optimize=False)
    assert rows == plain and rows  # some pairs match: not two empty results alike
    assert stats.stages and stats.stages[0]["role"] == "filter"  # lifted, not the per-pair UDF
    assert plain_stats.fallback_reason and not plain_stats.stages
    pairs = con.sql(sql.replace("llm_filter('Does the review mention the flavour?', r.review, f.flavour)", "TRUE")
                    .replace("SELECT r.id, f.flavour", "SELECT r.review, f.flavour").split(" ORDER BY")[0]).fetchall()
    stage = stats.stages[0]
    assert stage["rows_in"] == len(pairs)  # the nested loop's pairs, after the cheap conditions
    assert stats.llm_calls == len(set(pairs))  # each distinct pair asked once
    if not extra:
        assert len(set(pairs)) < len(pairs)  # review 1 = review 3: the loop would ask their pairs twice


def test_outer_join_condition_stays_with_the_udf(con, model_dir):
    sql = ("SELECT r.id, f.flavour FROM reviews r LEFT JOIN flavours f "
           "ON llm_filter('Does the review mention the flavour?', r.review, f.flavour) ORDER BY r.id, f.flavour")
    rows, stats = run(con, model_dir, sql)
    plain, _ = run(con, model_dir, sql, optimize=False)
    assert rows == plain and len({r[0] for r in rows}) == len(REVIEWS)  # every review kept, as a LEFT JOIN must
    assert not stats.stages


def test_multi_label_join_asks_once_per_review(con, model_dir):
    """Opt-in: one call per distinct review picks all its flavours; a pair is kept when its flavour was picked."""
    from udf.api import EvalSettings
    from udf.batch import evaluate
    from udf.functions import make_call
    from udf.multi_label import picking_call

    sql = JOIN.format(extra="").replace("r.review, f.flavour)", "r.review, f.flavour, {'multi_label': true})")
    db = llm_sql.register(con, model=model_dir, **COMMON)
    plan = llm_sql.explain(con, sql)
    assert plan.stages[0]["routing"]["kind"] == "multi-label join" and "changes the prompts" in str(plan)
    rows = db.sql(sql).fetchall()
    stats = llm_sql.last_stats(con)
    reviews = sorted({r for _, r, _ in REVIEWS if r is not None})
    assert stats.llm_calls == len(reviews)  # one per distinct review, not one per pair (a NULL review: none)
    routing = stats.stages[0]["routing"]
    assert routing["kind"] == "multi-label join" and routing["calls"] == len(reviews)
    assert routing["pairs"] == (len(reviews) + 1) * len(FLAVOURS)  # distinct pairs the loop would ask
    assert stats.stages[0]["rows_in"] == len(REVIEWS) * len(FLAVOURS)
    # the reference: the picking call alone, then membership
    flavours = sorted(f for f, _ in FLAVOURS)
    call = picking_call(make_call("llm_filter", "Does the review mention the flavour?", ["review", "flavour"]), 1,
                        flavours)
    picked = evaluate(call, [(r,) for r in reviews], db.session.backend,
                      settings=EvalSettings(result_cache=False, progress=False)).values
    chosen = {r: set(p["matches"]) for r, p in zip(reviews, picked) if p is not None}
    expected = sorted((i, f) for i, r, _ in REVIEWS if r in chosen for f in flavours if f in chosen[r])
    assert rows == expected
    # beside the query's own WHERE the moved condition is still the join's
    assert db.sql(sql.replace(" ORDER BY", " WHERE r.id > 0 ORDER BY")).fetchall() == expected


def test_multi_label_outside_a_join_is_an_error(con, model_dir):
    db = llm_sql.register(con, model=model_dir, **COMMON)
    with pytest.raises(Exception, match="multi_label applies"):
        db.sql("SELECT llm_filter('Is it hoppy?', review, {'multi_label': true}) FROM reviews").fetchall()

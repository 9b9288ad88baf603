"""Pure rule tests on sqlglot trees: no database, no LLM."""
from __future__ import annotations

import sqlglot
from sqlglot import exp

from optimizer.rewrite import plan_query
from optimizer.rules import (field_names, order_llm_predicates, parse_call, selects_post_order, split_conjuncts,
                             visible_ctes)

NAMES = {"llm", "llm_filter", "llm_classify", "llm_score"}


def norm(sql: str) -> str:
    return sqlglot.parse_one(sql, dialect="duckdb").sql(dialect="duckdb")


def test_query_without_llm_calls_is_untouched():
    for sql in ["SELECT a, b FROM t WHERE a > 1", "WITH c AS (SELECT 1 AS x) SELECT * FROM c",
                "SELECT upper(name) FROM 'data.csv' ORDER BY 1"]:
        plan = plan_query(sql)
        assert plan.sql == sql and plan.stages == [] and not plan.has_llm_calls


def test_projection_stage_selects_distinct_inputs_after_cheap_predicates():
    plan = plan_query("SELECT id, llm('Summarise', review) AS s FROM reviews WHERE stars > 3")
    (stage,) = plan.stages
    assert stage.function == "llm" and stage.instruction == "Summarise" and stage.field_names == ("review",)
    assert stage.sql == norm("SELECT DISTINCT review AS __llm_in_0 FROM reviews WHERE stars > 3")
    assert stage.role == "projection" and stage.depends_on == ()
    assert "IS NOT DISTINCT FROM review" in plan.sql and "LLM(" not in plan.sql.upper().replace("__LLM", "")
    assert f"FROM {stage.table}" in plan.sql


def test_filter_before_projection_and_cheap_before_llm():
    plan = plan_query("SELECT llm('Describe', name) FROM beers WHERE llm_filter('Is it dark?', style) AND abv > 5")
    f, p = plan.stages
    assert f.role == "filter" and f.field_names == ("style",)
    assert f.sql == norm("SELECT DISTINCT style AS __llm_in_0 FROM beers WHERE abv > 5")
    assert p.role == "projection" and p.depends_on == (f.index,)
    assert f.table in p.sql and "abv > 5" in p.sql
    where = sqlglot.parse_one(plan.sql, dialect="duckdb").args["where"]
    conj = split_conjuncts(where)
    assert conj[0].sql() == "abv > 5"  # the cheap predicate first


def test_cheaper_llm_predicate_first():
    sql = ("SELECT id FROM t WHERE llm_filter('A very long instruction about many things, repeated twice, "
           "repeated twice, repeated twice', a, b, c) AND llm_filter('Short?', d)")
    plan = plan_query(sql)
    first, second = plan.stages
    assert first.field_names == ("d",) and second.field_names == ("a", "b", "c")
    assert second.depends_on == (first.index,) and first.table in second.sql


def test_cost_callback_orders_predicates():
    sql = "SELECT id FROM t WHERE llm_filter('x', a) AND llm_filter('x', b)"
    plan = plan_query(sql, cost=lambda count_sql, est: 1.0 if "b AS" in count_sql else 100.0)
    assert plan.stages[0].field_names == ("b",)


def test_identical_calls_share_one_stage():
    plan = plan_query("SELECT llm('x', a) AS p, upper(llm('x', a)) FROM t WHERE llm('x', a) <> 'no'")
    assert len(plan.stages) == 1 and plan.stages[0].uses == 3
    assert plan.sql.count(plan.stages[0].table + " AS") == 3


def test_two_different_calls_two_stages():
    plan = plan_query("SELECT llm('x', a), llm_score('y', a, b) FROM t")
    assert [s.function for s in plan.stages] == ["llm", "llm_score"]
    assert plan.stages[1].field_names == ("a", "b")


def test_aggregate_over_llm_output():
    plan = plan_query("SELECT style, AVG(llm_score('Rate', review)) FROM t WHERE y = 1 GROUP BY style")
    (stage,) = plan.stages
    assert stage.sql == norm("SELECT DISTINCT review AS __llm_in_0 FROM t WHERE y = 1")
    assert "AVG((SELECT" in plan.sql and "GROUP BY style" in plan.sql


def test_cte_stage_reads_earlier_ctes():
    sql = ("WITH a AS (SELECT * FROM t WHERE llm_filter('keep?', x)), b AS (SELECT * FROM a WHERE y > 1) "
           "SELECT llm('x', z) FROM b")
    plan = plan_query(sql)
    f, p = plan.stages
    assert f.sql == norm("SELECT DISTINCT x AS __llm_in_0 FROM t")
    assert p.sql.startswith("WITH a AS") and "b AS" in p.sql and p.depends_on == (f.index,)
    assert plan.sql.startswith("WITH a AS")


def test_visible_ctes_inside_a_cte_body():
    tree = sqlglot.parse_one("WITH a AS (SELECT 1 AS x), b AS (SELECT x FROM a), c AS (SELECT 2) SELECT * FROM b")
    selects = selects_post_order(tree)
    b_body = tree.args["with_"].expressions[1].this
    assert [c.alias for c in visible_ctes(b_body)] == ["a"]
    assert [c.alias for c in visible_ctes(selects[-1])] == ["a", "b", "c"]
    assert selects[-1] is tree  # the outer query comes last


def test_join_stage_keeps_the_join():
    plan = plan_query("SELECT r.id, llm('x', r.review, b.region) FROM r JOIN b ON r.s = b.s WHERE b.cold")
    (stage,) = plan.stages
    assert stage.field_names == ("review", "region")
    assert stage.sql == norm("SELECT DISTINCT r.review AS __llm_in_0, b.region AS __llm_in_1 FROM r JOIN b "
                             "ON r.s = b.s WHERE b.cold")


def test_subqueries_and_correlation():
    plan = plan_query("SELECT id FROM t WHERE s IN (SELECT s FROM u WHERE llm_filter('f', u.x))")
    assert plan.stages[0].sql == norm("SELECT DISTINCT u.x AS __llm_in_0 FROM u")
    # correlated predicate is dropped from the stage (a superset of rows is asked), the call still lifted
    plan = plan_query("SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.id = t.id AND llm_filter('f', u.x))")
    assert plan.stages[0].sql == norm("SELECT DISTINCT u.x AS __llm_in_0 FROM u")
    # a call over an outer column is not lifted
    plan = plan_query("SELECT (SELECT max(llm('f', t.x)) FROM u) FROM t")
    assert plan.stages == [] and "correlated" in plan.fallbacks[0][1]


def test_nested_calls_inner_first():
    plan = plan_query("SELECT llm('translate', llm('summarise', x)) FROM t")
    inner, outer = plan.stages
    assert inner.instruction == "summarise" and outer.depends_on == (inner.index,)
    assert outer.field_names == ("LLM('summarise', x)",)


def test_unliftable_shapes_fall_back():
    cases = {
        "SELECT SUM(llm_score('a', x)) OVER (ORDER BY id) FROM t": "window",
        "SELECT list_transform(l, v -> llm('a', v)) FROM t": "lambda",
        "SELECT * FROM t LEFT JOIN u ON llm_filter('same?', t.a, u.b)": "joins",
        "SELECT * FROM t JOIN u ON llm_filter('same?', t.a, u.b) FULL JOIN v ON v.c = t.a": "joins",
        # ASOF keeps each row's nearest match among those its whole ON accepts: the condition must stay there
        "SELECT * FROM t ASOF JOIN u ON t.ts >= u.ts AND llm_filter('same?', t.a, u.b)": "joins",
        "SELECT * FROM t JOIN u ON llm_filter('same?', t.a, u.b) POSITIONAL JOIN v": "joins",
        "SELECT x FROM t GROUP BY x HAVING llm_filter('a', MAX(y))": "aggregate",
        "SELECT llm(instr, x) FROM t": "literal",
        "SELECT x FROM t UNION SELECT y FROM u ORDER BY llm('a', x)": "SELECT scope",
        "SELECT llm('a', random()::VARCHAR) FROM t": "volatile",
        "SELECT upper(x) AS y, llm('a', y) FROM t": "alias",
        "SELECT id FROM t WHERE llm_filter('a', x) LIMIT 5": "LIMIT",
    }
    for sql, why in cases.items():
        plan = plan_query(sql)
        assert plan.stages == [], sql
        assert plan.fallbacks and why in plan.fallbacks[0][1], (sql, plan.fallbacks)
        assert plan.sql == sql


def test_inner_join_llm_condition_becomes_a_filter_stage():
    plan = plan_query("SELECT t.id FROM t JOIN u ON llm_filter('same?', t.a, u.b) AND t.k = u.k, v WHERE v.x > 1")
    (stage,) = plan.stages
    assert stage.role == "filter" and stage.field_names == ("a", "b")
    assert stage.join_sides == ("t", "u")  # known as a join condition beside the WHERE's own terms (multi_label)
    assert stage.sql == norm("SELECT DISTINCT t.a AS __llm_in_0, u.b AS __llm_in_1 FROM t JOIN u ON t.k = u.k, v "
                             "WHERE v.x > 1")
    assert "ON t.k = u.k" in plan.sql and "LLM_FILTER" not in plan.sql.upper()


def test_limit_with_order_by_is_lifted():
    plan = plan_query("SELECT id, llm('a', x) FROM t ORDER BY id LIMIT 5")
    assert len(plan.stages) == 1


def test_volatile_predicate_is_not_a_prefilter():
    plan = plan_query("SELECT llm('a', x) FROM t WHERE random() < 0.5 AND y = 1")
    assert plan.stages[0].sql == norm("SELECT DISTINCT x AS __llm_in_0 FROM t WHERE y = 1")


def test_or_predicate_lifts_over_all_cheap_rows():
    plan = plan_query("SELECT id FROM t WHERE y = 1 AND (z > 2 OR llm_filter('f', x))")
    assert plan.stages[0].sql == norm("SELECT DISTINCT x AS __llm_in_0 FROM t WHERE y = 1")


def test_parse_call_literals_and_options():
    call = sqlglot.parse_one("llm_classify(review, stars, ['pos', 'neg'], {'max_tokens': 4, 'temperature': -0.0})",
                             dialect="duckdb")
    spec = parse_call(call)
    assert spec.function == "llm_classify" and spec.labels == ("pos", "neg")
    assert dict(spec.options) == {"max_tokens": 4, "temperature": -0.0}
    assert field_names(spec.fields) == ("review", "stars")
    plan = plan_query("SELECT llm('x', a, {'max_tokens': 3}) FROM t")
    assert plan.stages[0].options == (("max_tokens", 3),) and plan.stages[0].field_names == ("a",)


def test_field_names_plain_columns_expressions_and_clashes():
    fields = tuple(sqlglot.parse_one(f"SELECT {e}", dialect="duckdb").expressions[0]
                   for e in ["t.name", "upper(city)", "u.name"])
    assert field_names(fields) == ("t.name", "UPPER(city)", "u.name")


def test_predicate_ordering_is_stable():
    preds = [exp.column(c) for c in "abc"]
    assert [p.name for p in order_llm_predicates(preds, lambda p: {"a": 2, "b": 1, "c": 2}[p.name])] == ["b", "a", "c"]


def test_statement_wrappers_and_recursive_ctes():
    plan = plan_query("CREATE TABLE out AS SELECT llm('x', a) AS s FROM t")
    assert len(plan.stages) == 1 and plan.sql.startswith("CREATE TABLE out AS")
    plan = plan_query("WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r WHERE "
                      "llm_filter('go on?', n::VARCHAR)) SELECT * FROM r")
    assert plan.stages == [] and "recursive" in plan.fallbacks[0][1]

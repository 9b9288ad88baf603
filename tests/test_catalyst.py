"""The Spark Catalyst rules (io.llmsql.catalyst, built by llm_sql.jvm) on a real local[2] session.

The LLM functions are stand-ins registered here (pandas UDFs named like the real ones), so these
tests depend on neither a model nor the UDF package: the rules only look at Python UDFs whose name
starts with ``llm``.
"""

from __future__ import annotations

import contextlib
import re
import shutil

import pytest

pyspark = pytest.importorskip("pyspark")
pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")
if shutil.which("javac") is None:
    pytest.skip("javac is not installed (apt-get install openjdk-17-jdk-headless)", allow_module_level=True)
if shutil.which("java") is None:
    pytest.skip("java is not installed", allow_module_level=True)

from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql.functions import pandas_udf  # noqa: E402
from pyspark.sql.types import BooleanType, IntegerType, StringType  # noqa: E402

from llm_sql import jvm, spark_mode  # noqa: E402

ROWS = [
    (i, f"review {['good', 'bad', 'fine'][i % 3]} {i % 7}" if i % 11 else None, i % 5, f"beer{i % 4}")
    for i in range(60)
]


@pandas_udf(BooleanType())
def llm_filter(instruction: pd.Series, text: pd.Series) -> pd.Series:
    return (text.fillna("").str.len() % 2 == 0).astype(bool)


@pandas_udf(StringType())
def llm(instruction: pd.Series, a: pd.Series, b: pd.Series) -> pd.Series:
    return instruction + ":" + a.fillna("-") + "|" + b.fillna("-")


@pandas_udf(IntegerType())
def llm_score(instruction: pd.Series, text: pd.Series) -> pd.Series:
    return (text.fillna("").str.len() % 5 + 1).astype("int32")


@pandas_udf(StringType())
def llm_struct(instruction: pd.Series, fields: pd.DataFrame, options: pd.DataFrame) -> pd.Series:
    # the UDF side's calling convention: fields as one STRUCT, options as a trailing STRUCT literal
    return fields.apply(lambda r: repr(tuple(r)), axis=1).astype(str)


@pytest.fixture(scope="module")
def jar():
    return jvm.extension_jar()


@pytest.fixture(scope="module")
def spark(jar, tmp_path_factory):
    jvm.add_to_driver_classpath(jar)  # a JVM started by an earlier module lacks spark.jars
    s = (
        SparkSession.builder.master("local[2]")
        .appName("llm-sql-catalyst-test")
        .config("spark.jars", str(jar))
        .config("spark.sql.extensions", jvm.EXTENSION_CLASS)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    if jvm.EXTENSION_CLASS not in s.conf.get("spark.sql.extensions", ""):
        pytest.skip("another SparkSession without the llm-sql extension is still running in this process")
    spark_mode.workers_run_this_python(s, local=True)  # as register() does: not python3 from PATH
    for f in (llm_filter, llm, llm_score, llm_struct):
        s.udf.register(f.__name__, f)
    path = str(tmp_path_factory.mktemp("reviews") / "reviews.parquet")
    s.createDataFrame(ROWS, "id int, review string, stars int, beer string").repartition(2).write.parquet(path)
    s.read.parquet(path).createOrReplaceTempView("reviews")
    s.conf.set(jvm.OPTIMIZE_CONF, "true")
    yield s
    s.stop()


def _plan(df) -> str:
    return df._jdf.queryExecution().optimizedPlan().toString()


def _norm(plan: str) -> str:
    return re.sub(r"#\d+L?", "#N", plan)


def _rows(df):
    return sorted((tuple(r) for r in df.collect()), key=repr)


@pytest.fixture
def dedup_off(spark):
    """Only the ordering and predicate rules (the plan shapes are easier to read without the join)."""
    spark.conf.set("llm_sql.dedup", "false")
    yield
    spark.conf.set("llm_sql.dedup", "true")


@contextlib.contextmanager
def optimizer_off(spark):
    """llm_sql.optimize=false for the block (the plain plan), back on afterwards whatever happens."""
    spark.conf.set(jvm.OPTIMIZE_CONF, "false")
    try:
        yield
    finally:
        spark.conf.set(jvm.OPTIMIZE_CONF, "true")


@pytest.fixture
def rules_off(spark):
    with optimizer_off(spark):
        yield


LLM_QUERIES = {
    "filter": "SELECT id FROM reviews WHERE llm_filter('Is it positive?', review)",
    "cheap_and_llm_filter": "SELECT id, review FROM reviews WHERE llm_filter('Positive?', review) AND stars <= 2",
    "projection": "SELECT id, llm('Summarise', review, beer) AS s FROM reviews",
    "filter_and_projection": (
        "SELECT id, llm('Summarise', beer, review) AS s FROM reviews "
        "WHERE stars < 3 AND llm_filter('Positive?', review)"
    ),
    "two_calls_and_nulls": (
        "SELECT id, llm('A', review, beer) AS a, llm_score('B', review) AS b FROM reviews WHERE id % 2 = 0"
    ),
    "group_by_avg_score": (
        "SELECT beer, avg(llm_score('Rate it', review)) AS s, count(*) AS n FROM reviews GROUP BY beer"
    ),
    "join": (
        "SELECT a.id, llm('Compare', a.review, b.beer) AS c FROM reviews a JOIN reviews b "
        "ON a.id = b.id + 1 WHERE llm_filter('Positive?', a.review)"
    ),
    "llm_join_condition": (
        "SELECT a.id, b.id AS other FROM reviews a JOIN reviews b ON a.stars = b.stars AND a.id < b.id "
        "AND llm_filter('Same beer?', concat(a.beer, b.beer))"
    ),
    "duplicates_only_constant_args": "SELECT id, llm_score('Rate', 'same text') AS s FROM reviews",
    "struct_fields_and_options": (
        "SELECT id, llm_struct('Summarise', struct(review, stars), named_struct('max_tokens', 8)) AS s "
        "FROM reviews"
    ),
    "exists_subquery": (
        "SELECT id FROM reviews a WHERE EXISTS "
        "(SELECT 1 FROM reviews b WHERE b.id = a.id + 1 AND llm_filter('Positive?', b.review))"
    ),
    "correlated_scalar_subquery": (
        "SELECT id, (SELECT max(llm_score('Rate', b.review)) FROM reviews b WHERE b.beer = a.beer) AS m "
        "FROM reviews a"
    ),
    "limit": "SELECT id, llm('Summarise', review, beer) AS s FROM reviews LIMIT 7",
    "empty": "SELECT id, llm('Summarise', review, beer) AS s FROM reviews WHERE stars > 100",
}


def test_jar_builds_once_and_is_reused(jar):
    assert jar.exists() and jar.name == "llm-sql-catalyst.jar"
    count = jvm.BUILD_COUNT
    mtime = jar.stat().st_mtime_ns
    again = jvm.extension_jar()
    assert again == jar
    assert jvm.BUILD_COUNT == count  # no second javac run
    assert jar.stat().st_mtime_ns == mtime
    import zipfile

    names = zipfile.ZipFile(jar).namelist()
    assert "io/llmsql/catalyst/LLMSQLExtensions.class" in names
    assert "io/llmsql/catalyst/OrderRowsForPrefixes.class" in names


def test_concurrent_builds_compile_once(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    before = jvm.BUILD_COUNT
    with ThreadPoolExecutor(3) as pool:
        jars = list(pool.map(lambda _: jvm.extension_jar(cache_dir=tmp_path), range(3)))
    assert len(set(jars)) == 1 and jars[0].exists()
    assert jvm.BUILD_COUNT - before == 1
    assert not [p for p in jars[0].parent.iterdir() if p.name not in {jvm.JAR_NAME, ".lock"}]


def test_missing_javac_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(jvm.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="openjdk-17-jdk-headless"):
        jvm.extension_jar()


def test_filter_gets_sort_within_partitions_on_llm_inputs(spark, dedup_off):
    plan = _plan(spark.sql(LLM_QUERIES["filter"]))
    assert re.search(r"Sort \[review#\d+ ASC NULLS FIRST\], false", plan), plan
    # the sort sits below the evaluation of the LLM filter
    assert plan.index("ArrowEvalPython [llm_filter") < plan.index("Sort [review")


def test_projection_sorts_in_argument_order(spark, dedup_off):
    plan = _plan(spark.sql(LLM_QUERIES["projection"]))
    assert re.search(r"Sort \[review#\d+ ASC NULLS FIRST, beer#\d+ ASC NULLS FIRST\], false", plan), plan
    plan = _plan(spark.sql("SELECT llm('S', beer, review) AS s FROM reviews"))
    assert re.search(r"Sort \[beer#\d+ ASC NULLS FIRST, review#\d+ ASC NULLS FIRST\], false", plan), plan


def test_cheap_predicates_run_before_the_llm_filter(spark, dedup_off):
    plan = _plan(spark.sql(LLM_QUERIES["cheap_and_llm_filter"]))
    llm_at = plan.index("ArrowEvalPython [llm_filter")
    sort_at = plan.index("Sort [review")
    cheap_at = plan.index("(stars#")
    assert llm_at < sort_at < cheap_at, plan  # top-down: LLM filter, then sort, then cheap filter
    explain = spark.sql("EXPLAIN EXTENDED " + LLM_QUERIES["cheap_and_llm_filter"]).collect()[0][0]
    assert "Sort [review" in explain


def test_cheap_predicates_first_rule_splits_the_filter(spark):
    # The rule on its own, on the analysed plan: Filter(llm AND cheap) -> Filter(llm, Filter(cheap)).
    df = spark.sql("SELECT id FROM reviews WHERE llm_filter('Positive?', review) AND stars <= 2 AND id > 3")
    analyzed = df._jdf.queryExecution().analyzed()
    rule = spark._jvm.io.llmsql.catalyst.CheapPredicatesFirst(spark._jsparkSession)
    out = rule.apply(analyzed).toString()
    lines = [ln.strip() for ln in out.splitlines()]
    llm_line = next(i for i, ln in enumerate(lines) if "llm_filter" in ln)
    cheap_line = next(i for i, ln in enumerate(lines) if "stars#" in ln and "Filter" in ln)
    assert "Filter llm_filter" in lines[llm_line] and "stars" not in lines[llm_line], out
    assert "id#" in lines[cheap_line] and cheap_line > llm_line, out
    assert rule.apply(rule.apply(analyzed)).toString() == out  # idempotent


def test_inferred_copies_of_an_llm_predicate_are_dropped(spark):
    """From beer = 'beer1' AND llm_filter(.., concat(review, beer)) Catalyst infers llm_filter(.., concat(review,
    'beer1')) (it takes the UDF for a deterministic function; a field struct, struct(review, beer), gets the same):
    the plain plan asks the model twice per row. The rules keep the user's call only."""
    q = "SELECT id FROM reviews WHERE beer = 'beer1' AND llm_filter('Positive?', concat(review, beer)) AND stars > 1"
    with optimizer_off(spark):
        plain_plan, plain_rows = _plan(spark.sql(q)), _rows(spark.sql(q))
    assert plain_plan.count("llm_filter(") == 2, plain_plan  # Spark's own inference, with our rules off
    plan = _plan(spark.sql(q))
    assert plan.count("llm_filter(") == 1, plan
    assert re.search(r"Aggregate \[concat\(review#\d+, beer#\d+\)\]", plan), plan  # the user's call, not the copy
    assert _rows(spark.sql(q)) == plain_rows and plain_rows
    # a conjunct that is not a copy stays
    other = _plan(spark.sql("SELECT id FROM reviews WHERE beer = 'beer1' AND llm_filter('Positive?', concat(review, "
                            "beer)) AND llm_filter('Negative?', concat(review, beer))"))
    assert other.count("llm_filter(") == 2, other


def test_rules_are_idempotent(spark):
    df = spark.sql(LLM_QUERIES["filter_and_projection"])
    analyzed = df._jdf.queryExecution().analyzed()
    pkg = spark._jvm.io.llmsql.catalyst
    js = spark._jsparkSession
    rules = [
        pkg.CheapPredicatesFirst(js),
        pkg.PullLLMOutOfAggregates(js),
        pkg.DeduplicateLLMCalls(js),
        pkg.OrderRowsForPrefixes(js),
    ]

    def run(plan):
        for r in rules:
            plan = r.apply(plan)
        return plan

    once = run(analyzed)
    twice = run(once)
    assert once.toString() == twice.toString()
    # the filter is deduplicated (its sort sits on the distinct tuples), the projection sorted
    assert once.toString().count("Sort [") == 2, once.toString()
    assert once.toString().count("Aggregate [") == 1, once.toString()
    # in the full optimizer too: one sort per LLM node, no pile-up
    plan = _plan(df)
    assert plan.count("Sort [") == 2, plan


def test_dedup_aggregate_and_null_safe_join_in_plan(spark):
    plan = _plan(spark.sql(LLM_QUERIES["projection"]))
    assert re.search(r"Aggregate \[review#\d+, beer#\d+\]", plan), plan
    assert re.search(r"Join Inner, \(\(review#\d+ <=> review#\d+\) AND \(beer#\d+ <=> beer#\d+\)\)", plan), plan
    # the LLM runs above the sorted distinct tuples
    assert plan.index("ArrowEvalPython [llm(") < plan.index("Sort [review") < plan.index("Aggregate [review")
    # distinct tuples are range-partitioned on the same keys, so shared prefixes share a partition
    assert re.search(r"RepartitionByExpression \[review#\d+ ASC NULLS FIRST, beer#\d+ ASC NULLS FIRST\]", plan)
    explain = spark.sql("EXPLAIN " + LLM_QUERIES["projection"]).collect()[0][0]
    assert "HashAggregate" in explain and "Sort [" in explain and "rangepartitioning" in explain, explain


def test_llm_join_condition_is_lifted_and_its_pairs_deduplicated(spark):
    """The LLM conjunct of an inner join's ON runs over the pairs the cheap keys match, once per distinct pair
    (Spark refuses a Python UDF in an outer join's ON)."""
    plan = _plan(spark.sql(LLM_QUERIES["llm_join_condition"]))
    assert plan.count("llm_filter(") == 1, plan
    agg = plan.index("Aggregate [concat(beer#")
    assert re.search(r"Join Inner, \(\(?stars#\d+ = stars#\d+", plan[agg:]), plan  # the pairs: the cheap keys only


def test_llm_projection_over_an_llm_filter_is_colocated_not_joined(spark):
    """The filter is deduplicated (joined back); the projection above it is not joined back, which would plan
    the filter, and call its LLM, twice: its rows are range-partitioned and sorted on its inputs instead, so
    the UDF's batch dedup sees equal tuples together."""
    plan = _plan(spark.sql(LLM_QUERIES["filter_and_projection"]))
    assert plan.count("ArrowEvalPython [llm_filter(") == 1 and plan.count("Aggregate [") == 1, plan
    proj = plan.index("ArrowEvalPython [llm(")
    sort = re.search(r"Sort \[beer#\d+ ASC NULLS FIRST, review#\d+ ASC NULLS FIRST\], false", plan)
    spread = re.search(r"RepartitionByExpression \[beer#\d+ ASC NULLS FIRST, review#\d+ ASC NULLS FIRST\]", plan)
    assert sort and spread and proj < sort.start() < spread.start() < plan.index("ArrowEvalPython [llm_filter("), plan


def test_llm_inside_an_aggregate_function_is_deduplicated_and_ordered(spark):
    plan = _plan(spark.sql(LLM_QUERIES["group_by_avg_score"]))
    assert re.search(r"avg\(_llm_arg_0#\d+\)", plan), plan
    assert re.search(r"Aggregate \[review#\d+\], \[review#\d+ AS review#\d+\]", plan), plan
    assert plan.index("ArrowEvalPython [llm_score(") < plan.index("Sort [review"), plan


def test_struct_fields_are_the_dedup_key_and_options_stay_constant(spark):
    plan = _plan(spark.sql(LLM_QUERIES["struct_fields_and_options"]))
    assert re.search(r"Aggregate \[struct\(review, review#\d+, stars, stars#\d+\)\]", plan), plan
    assert re.search(r"Sort \[_llm_key_0#\d+ ASC NULLS FIRST\], false", plan), plan
    assert re.search(r"llm_struct\(Summarise, _llm_key_0#\d+, \[8\]\)", plan), plan


def test_dedup_calls_the_llm_once_per_distinct_input(spark):
    calls = spark.sparkContext.accumulator(0)

    @pandas_udf(StringType())
    def llm_counted(instruction: pd.Series, text: pd.Series) -> pd.Series:
        calls.add(len(text))
        return instruction + ":" + text.fillna("-")

    spark.udf.register("llm_counted", llm_counted)
    query = "SELECT id, llm_counted('Summarise', review) AS s FROM reviews WHERE stars <= 3"
    distinct = spark.sql("SELECT count(DISTINCT coalesce(review, '<null>')) FROM reviews WHERE stars <= 3").first()[0]
    total = spark.sql("SELECT count(*) FROM reviews WHERE stars <= 3").first()[0]
    on = _rows(spark.sql(query))
    assert calls.value == distinct < total
    with optimizer_off(spark):
        before = calls.value
        off = _rows(spark.sql(query))
        assert calls.value - before == total
    assert on == off and len(on) == total


@pytest.mark.parametrize(
    "query",
    [
        "SELECT id, upper(review) AS r FROM reviews WHERE stars <= 2 AND id > 3 ORDER BY id",
        "SELECT beer, avg(stars), count(*) FROM reviews GROUP BY beer",
        "SELECT a.id, b.beer FROM reviews a JOIN reviews b ON a.id = b.id WHERE a.stars = 1",
        "SELECT * FROM (SELECT id, review FROM reviews WHERE review LIKE '%good%') t WHERE id < 30",
    ],
)
def test_queries_without_llm_calls_are_untouched(spark, query):
    plain = _plain_session(spark)
    assert "io.llmsql.catalyst" in spark._jsparkSession.sessionState().optimizer().preCBORules().toString()
    assert "io.llmsql.catalyst" not in plain.sessionState().optimizer().preCBORules().toString()
    # the same view, registered in the session without the extension
    path = spark.sql("SELECT input_file_name() AS f FROM reviews LIMIT 1").collect()[0][0]
    plain.read().parquet(path.rsplit("/", 1)[0]).createOrReplaceTempView("reviews")
    with_ext = _plan(spark.sql(query))
    without = plain.sql(query).queryExecution().optimizedPlan().toString()
    assert _norm(with_ext) == _norm(without)


def _plain_session(spark):
    """A JVM session on the same SparkContext whose extensions are empty (no llm-sql rules)."""
    j = spark._jvm
    scala_map = getattr(j.scala.collection.immutable, "Map$").__getattr__("MODULE$").empty()
    return j.org.apache.spark.sql.classic.SparkSession(
        spark._jsc.sc(),
        j.scala.Option.empty(),
        j.scala.Option.empty(),
        j.org.apache.spark.sql.SparkSessionExtensions(),
        scala_map,
        scala_map,
    )


@pytest.mark.parametrize(
    "query",
    [
        "SELECT id, llm('x', review, beer) AS s FROM reviews LIMIT 5",
        "SELECT id FROM reviews WHERE llm_filter('x', review) ORDER BY id LIMIT 5 OFFSET 2",
    ],
)
def test_limit_queries_are_left_alone(spark, query):
    # the plain plan calls the LLM on a few rows only; dedup would call it on every distinct tuple
    on = _plan(spark.sql(query))
    with optimizer_off(spark):
        off = _plan(spark.sql(query))
    assert _norm(on) == _norm(off)


def test_rules_off_gives_the_plain_plan(spark, rules_off):
    plan = _plan(spark.sql(LLM_QUERIES["filter"]))
    assert "Sort [" not in plan


@pytest.mark.parametrize("name", sorted(LLM_QUERIES))
def test_results_equal_with_rules_off(spark, name):
    query = LLM_QUERIES[name]
    on = _rows(spark.sql(query))
    with optimizer_off(spark):
        off = _rows(spark.sql(query))
    assert on == off
    if name != "empty":
        assert on


def test_dataframe_api_gets_the_rules(spark, dedup_off):
    from pyspark.sql import functions as F

    df = spark.table("reviews").where(llm_filter(F.lit("Positive?"), F.col("review"))).select("id")
    assert re.search(r"Sort \[review#\d+ ASC NULLS FIRST\], false", _plan(df))


@pytest.fixture
def analyzed_reviews(spark, tmp_path):
    """``reviews`` as a catalog table with column statistics (an external table: no warehouse dir here)."""
    spark.sql(f"CREATE TABLE analyzed_reviews USING parquet LOCATION '{tmp_path / 't'}' AS SELECT * FROM reviews")
    spark.sql("ANALYZE TABLE analyzed_reviews COMPUTE STATISTICS FOR COLUMNS review, stars, beer")
    spark.conf.set("llm_sql.reorder_fields", "true")
    spark.conf.set("llm_sql.field_order", "statistics")
    yield "analyzed_reviews"
    spark.conf.unset("llm_sql.reorder_fields")
    spark.conf.unset("llm_sql.field_order")
    spark.sql("DROP TABLE analyzed_reviews")


def test_field_order_from_column_statistics(spark, analyzed_reviews):
    """Fields sorted by the prefix they share (len^2 * repeated rows / rows): the long, mostly repeated
    review first; the call gets reorder_fields => false so the UDF keeps that order."""
    q = (f"SELECT id, llm_struct('x', struct(stars, beer, review), named_struct('max_tokens', 3)) AS s "
         f"FROM {analyzed_reviews}")
    plan = _plan(spark.sql(q))
    assert re.search(r"named_struct\(review, review#\d+, beer, beer#\d+, stars, stars#\d+\)", plan), plan
    assert re.search(r"llm_struct\(x, _llm_key_0#\d+, \[3,false\]\)", plan), plan  # options {3, false}, folded
    chosen = (f"SELECT id, llm_struct('x', struct(review, beer, stars), named_struct('max_tokens', 3, "
              f"'reorder_fields', false)) AS s FROM {analyzed_reviews}")
    optimised = _rows(spark.sql(q))
    with optimizer_off(spark):
        assert optimised == _rows(spark.sql(chosen))


def test_field_order_from_statistics_of_a_cached_table(spark, analyzed_reviews):
    spark.sql(f"CACHE TABLE {analyzed_reviews}")  # the plan then reads an InMemoryRelation
    try:
        plan = _plan(spark.sql(f"SELECT llm_struct('x', struct(stars, beer, review), named_struct('max_tokens', 3)) "
                               f"AS s FROM {analyzed_reviews}"))
        assert "InMemoryRelation" in plan, plan
        assert re.search(r"named_struct\(review, review#\d+, beer, beer#\d+, stars, stars#\d+\)", plan), plan
    finally:
        spark.sql(f"UNCACHE TABLE {analyzed_reviews}")


def test_field_order_needs_statistics_and_the_switch(spark, analyzed_reviews):
    q = "SELECT llm_struct('x', struct(stars, beer, review), named_struct('max_tokens', 3)) AS s FROM {}"
    assert "reorder_fields" not in _plan(spark.sql(q.format("reviews")))  # a view without statistics
    spark.conf.set("llm_sql.field_order", "batch")
    assert "reorder_fields" not in _plan(spark.sql(q.format(analyzed_reviews)))  # left to the UDF's batches
    spark.conf.set("llm_sql.field_order", "statistics")
    spark.conf.set("llm_sql.reorder_fields", "false")
    assert "reorder_fields" not in _plan(spark.sql(q.format(analyzed_reviews)))  # opt-in

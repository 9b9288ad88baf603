"""llm_extract in Spark SQL and the DataFrame API on a real local[2] session with the Catalyst extension: a STRUCT of
exactly the schema's types (TypeExtractCalls), equal to the plain per-row evaluation, to the rules-off plan and to
DuckDB mode on the same rows and engine server; a cut-off answer is NULL with its reason in last_stats; a missing or
malformed schema is a clear error. A tiny random model writes nonsense into the fields, but of the right types."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

pyspark = pytest.importorskip("pyspark")
if shutil.which("javac") is None or shutil.which("java") is None:
    pytest.skip("the Catalyst extension needs java and javac", allow_module_level=True)
from pyspark.sql import functions as F  # noqa: E402
from pyspark.sql.types import _parse_datatype_string  # noqa: E402

if not hasattr(F, "arrow_udf"):
    pytest.skip("llm-sql's Spark UDFs need pyspark >= 4.1", allow_module_level=True)

import duckdb  # noqa: E402

import llm_sql  # noqa: E402
from llm_sql import jvm, spark_mode  # noqa: E402
from llm_sql.functions import llm_extract  # noqa: E402
from udf.api import EvalSettings  # noqa: E402
from udf.batch import evaluate  # noqa: E402
from udf.extract import output_schema  # noqa: E402
from udf.functions import make_call  # noqa: E402

# The same schema in Spark's spelling and in DuckDB's: one type, one JSON schema to decode under.
SPARK_SCHEMA = "brewery STRING, abv DOUBLE, styles ARRAY<STRING>, facts STRUCT<year: INT, organic: BOOLEAN>"
DUCKDB_SCHEMA = "brewery VARCHAR, abv DOUBLE, styles VARCHAR[], facts STRUCT(year INTEGER, organic BOOLEAN)"
ROWS = [(0, "Hill Farm IPA, 6.5% abv, hoppy"), (1, "Old Mill Stout 8%"), (2, None),
        (3, "Hill Farm IPA, 6.5% abv, hoppy"), (4, "Crisp pilsner from Zell, 4.9%")]
DISTINCT = 3  # non-NULL reviews
INSTRUCTION = "Extract the facts"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from engine_backend.testing import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("extract_spark") / "tiny", arch="llama"))


@pytest.fixture(scope="module")
def spark(model_dir, extension_spark):
    with extension_spark(model_dir, "llm-sql-extract-test") as session:
        session.createDataFrame(ROWS, "id int, review string").repartition(2).createOrReplaceTempView("reviews")
        yield session


def plain(backend, schema, field_names=("review",), **options):
    """The plain per-row evaluation (no dedup, no reordering, no cache) of llm_extract over ROWS, as dicts."""
    call = make_call("llm_extract", instruction=INSTRUCTION, field_names=field_names,
                     options={"schema": schema, **options})
    settings = EvalSettings(dedup=False, reorder=False, result_cache=False, progress=False)
    return evaluate(call, [(r,) for _, r in ROWS], backend, settings=settings).values


def values(rows, column="x"):
    by_id = sorted(rows, key=lambda r: r["id"])
    return [None if r[column] is None else r[column].asDict(recursive=True) for r in by_id]


def sql_extract(schema: str, options: str = "") -> str:
    return (f"SELECT id, llm_extract('{INSTRUCTION}', struct(review), named_struct('schema', '{schema}'{options})) "
            "AS x FROM reviews")


def test_sql_struct_equals_plain_rules_off_and_duckdb(spark, node_server):
    spark_mode.reset_stats(spark)
    df = spark.sql(sql_extract(SPARK_SCHEMA))
    assert df.schema["x"].dataType == _parse_datatype_string(output_schema(SPARK_SCHEMA).spark_type)
    plan = df._jdf.queryExecution().optimizedPlan().toString()
    assert "Aggregate" in plan and "llm_extract_json" in plan  # the dedup rule saw an LLM call
    got = values(df.collect())
    assert spark_mode.last_stats(spark).llm_calls == DISTINCT

    assert got == plain(node_server, SPARK_SCHEMA)
    spark.conf.set(jvm.OPTIMIZE_CONF, "false")
    try:
        off = spark.sql(sql_extract(SPARK_SCHEMA))
        assert "Aggregate" not in off._jdf.queryExecution().optimizedPlan().toString()
        assert values(off.collect()) == got
    finally:
        spark.conf.set(jvm.OPTIMIZE_CONF, "true")

    con = duckdb.connect()
    con.execute("CREATE TABLE reviews (id INTEGER, review VARCHAR)")
    con.executemany("INSERT INTO reviews VALUES (?, ?)", ROWS)
    db = llm_sql.register(con, backend=node_server, cache=False, progress=False)
    duck = db.sql(f"SELECT llm_extract('{INSTRUCTION}', review, {{'schema': '{DUCKDB_SCHEMA}'}}) FROM reviews "
                  "ORDER BY id").fetchall()
    assert [r[0] for r in duck] == got

    assert got[2] is None  # a NULL field: NULL without a call
    for x in (v for v in got if v is not None):
        assert isinstance(x["brewery"], str) and isinstance(x["abv"], float)
        assert all(isinstance(s, str) for s in x["styles"])
        assert isinstance(x["facts"]["year"], int) and isinstance(x["facts"]["organic"], bool)


def test_dataframe_api_equals_sql_and_its_fields_are_columns(spark, node_server):
    df = spark.table("reviews").select("id", llm_extract(INSTRUCTION, "review", schema=SPARK_SCHEMA).alias("x"))
    assert df.schema["x"].dataType == _parse_datatype_string(output_schema(SPARK_SCHEMA).spark_type)
    got = values(df.collect())
    assert got == values(spark.sql(sql_extract(SPARK_SCHEMA)).collect())
    abv = df.select("id", F.col("x.abv").alias("abv")).where(F.col("abv").isNotNull()).collect()
    assert sorted((r.id, r.abv) for r in abv) == [(i, v["abv"]) for i, v in enumerate(got) if v is not None]


def test_json_schema_gives_its_struct(spark, node_server):
    schema = '{"type": "object", "properties": {"style": {"enum": ["IPA", "Stout"]}, "ok": {"type": "boolean"}}}'
    df = spark.sql(sql_extract(schema))
    assert df.schema["x"].dataType.simpleString() == "struct<style:string,ok:boolean>"
    got = values(df.collect())
    assert got == plain(node_server, schema)
    assert all(v["style"] in ("IPA", "Stout") for v in got if v is not None)


def test_cut_off_answers_are_null_with_the_reason(spark, node_server):
    spark_mode.reset_stats(spark)
    got = values(spark.sql(sql_extract(SPARK_SCHEMA, ", 'max_tokens', 3")).collect())
    assert got == [None] * len(ROWS)
    assert got == plain(node_server, SPARK_SCHEMA, max_tokens=3)
    stats = spark_mode.last_stats(spark)
    assert stats.errors == DISTINCT and "not complete JSON" in stats.error_reasons[0]


@pytest.mark.parametrize("options, needle", [
    ("", "needs the option schema"),
    (", named_struct('max_tokens', 8)", "needs the option schema"),
    (", named_struct('schema', 'brewery BLOB')", "unsupported type BLOB"),
    (", named_struct('schema', 'brewery STRING,')", "is not a field list"),
    (", named_struct('schema', '{\"type\": \"string\"}')", "must describe an object"),
    (", named_struct('schema', '{\"type\": ')", "not valid JSON"),
    (", named_struct('schema', review)", "must be constants"),
])
def test_missing_or_bad_schema_fails_the_analysis(spark, options, needle):
    from pyspark.errors import AnalysisException

    with pytest.raises(AnalysisException, match=re.escape(needle)):
        spark.sql(f"SELECT llm_extract('{INSTRUCTION}', struct(review){options}) FROM reviews")


def test_dataframe_api_checks_the_schema_before_spark(spark):
    with pytest.raises(ValueError, match="unsupported type BLOB"):
        llm_extract(INSTRUCTION, "review", schema="brewery BLOB")
    with pytest.raises(TypeError, match="schema"):
        llm_extract(INSTRUCTION, "review")


# Java's table of scalar spellings (ExtractSchema.SPELLINGS): each must read as Python reads it.
_JAVA = Path(jvm.sources_dir()) / "io" / "llmsql" / "catalyst" / "ExtractSchema.java"
SPELLINGS = re.findall(r'Map\.entry\("(\w+)"', _JAVA.read_text())
FORMS = ["a VARCHAR(10), b DECIMAL(5, 2), c NUMERIC(3)", "a INT[], b STRING[][]", "a ARRAY<ARRAY<BIGINT>>",
         "a STRUCT(x INT, y VARCHAR[])", "a: STRUCT<x: INT, `y z`: ARRAY<STRUCT<w: BOOLEAN>>>", '"a b" INT, c LONG',
         "`a b` INT, c: STRUCT<d STRING>", "a array<string>, b struct<c: double>",
         '{"type": "object", "properties": {"n": {"type": "integer"}, "xs": {"type": "array", "items": '
         '{"type": "number"}}, "o": {"type": "object", "properties": {"s": {"enum": ["p", "q"]}}}}}']


def test_spark_reads_every_schema_spelling_as_python_does(spark):
    assert len(SPELLINGS) > 20
    schemas = [", ".join(f"f{i} {t}" for i, t in enumerate(SPELLINGS)), *FORMS]
    for schema in schemas:
        analysed = spark.sql(sql_extract(schema.replace("'", "\\'"))).schema["x"].dataType
        assert analysed == _parse_datatype_string(output_schema(schema).spark_type), schema

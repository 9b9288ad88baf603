"""llm_extract in DuckDB: a STRUCT of exactly the schema's SQL types, decoded under the schema's grammar, equal
optimised and plain; a malformed schema is an error naming it; an answer cut at max_tokens is NULL with that reason.
A tiny random model writes nonsense into the fields, but always of the right types."""
from __future__ import annotations

import duckdb
import pytest

import llm_sql
from udf.extract import output_schema

SCHEMA = "brewery VARCHAR, abv DOUBLE, styles VARCHAR[], facts STRUCT(year INTEGER, organic BOOLEAN)"
REVIEWS = ["Hill Farm IPA, 6.5% abv, hoppy", "Old Mill Stout 8%", None, "Hill Farm IPA, 6.5% abv, hoppy"]
COMMON = dict(cache=False, progress=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from engine_backend.testing import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("extract") / "tiny", arch="llama"))


@pytest.fixture()
def con():
    c = duckdb.connect()
    c.execute("CREATE TABLE t (id INTEGER, review VARCHAR)")
    c.executemany("INSERT INTO t VALUES (?, ?)", list(enumerate(REVIEWS)))
    yield c
    c.close()


def run(con, model_dir, sql, **opts):
    db = llm_sql.register(con, model=model_dir, **COMMON, **opts)
    rel = db.sql(sql)
    return rel.types, rel.fetchall(), llm_sql.last_stats(con)


def test_struct_of_the_schema_types_equal_optimised_and_plain(con, model_dir):
    sql = f"SELECT id, llm_extract('Extract the facts', review, {{'schema': '{SCHEMA}'}}) AS x FROM t ORDER BY id"
    types, rows, stats = run(con, model_dir, sql)
    _, plain, plain_stats = run(con, model_dir, sql, optimize=False)
    assert str(types[1]).replace('"', "") == output_schema(SCHEMA).duckdb_type.replace('"', "")
    assert rows == plain
    assert stats.llm_calls == 2 and plain_stats.llm_calls == 3  # dedup: two distinct reviews
    assert rows[2][1] is None  # a NULL field: NULL without a call
    for _, x in (r for r in rows if r[1] is not None):
        assert isinstance(x["brewery"], str) and isinstance(x["abv"], float)
        assert isinstance(x["styles"], list) and all(isinstance(s, str) for s in x["styles"])
        assert isinstance(x["facts"]["year"], int) and isinstance(x["facts"]["organic"], bool)


def test_json_schema_and_a_field_of_the_struct(con, model_dir):
    schema = '{"type": "object", "properties": {"style": {"enum": ["IPA", "Stout"]}, "ok": {"type": "boolean"}}}'
    sql = (f"SELECT id, llm_extract('Extract', review, {{'schema': '{schema}'}}).style AS s FROM t "
           "WHERE review IS NOT NULL ORDER BY id")
    _, rows, _ = run(con, model_dir, sql)
    assert [r[1] in ("IPA", "Stout") for r in rows] == [True] * 3


def test_cut_off_answers_are_null_with_the_reason(con, model_dir):
    sql = f"SELECT llm_extract('Extract', review, {{'schema': '{SCHEMA}', 'max_tokens': 3}}) FROM t"
    _, rows, stats = run(con, model_dir, sql)
    assert all(r[0] is None for r in rows)
    assert stats.errors == 2 and "not complete JSON" in stats.error_reasons[0]  # one per distinct input


def test_bad_schemas_are_clear_errors(con, model_dir):
    for schema, needle in [("brewery BLOB", "unsupported type"), ("", "schema"),
                           ("{\"type\": \"string\"}", "must describe an object")]:
        with pytest.raises(Exception, match=needle):
            run(con, model_dir, f"SELECT llm_extract('Extract', review, {{'schema': '{schema}'}}) FROM t")
    with pytest.raises(Exception, match="needs the option schema"):
        run(con, model_dir, "SELECT llm_extract('Extract', review) FROM t")


def test_output_schema_types_and_parsing():
    out = output_schema("a VARCHAR, n BIGINT, xs DOUBLE[], s STRUCT(ok BOOLEAN)")
    assert out.spark_type == "STRUCT<`a`: STRING, `n`: BIGINT, `xs`: ARRAY<DOUBLE>, `s`: STRUCT<`ok`: BOOLEAN>>"
    assert out.parse('{"a": "x", "n": 3, "xs": [1, 2.5], "s": {"ok": true}}') == (
        {"a": "x", "n": 3, "xs": [1.0, 2.5], "s": {"ok": True}}, None)
    value, why = out.parse('{"a": 1, "n": 3, "xs": [], "s": {"ok": true}}')
    assert value is None and "answer.a: 1 is not a VARCHAR" in why
    assert out.json_schema["properties"]["a"]["maxLength"] > 0  # bounded, so an answer ends


def test_extract_through_an_openai_compatible_endpoint(con, model_dir):
    """The same query against our server over HTTP (the schema travels as response_format) gives the same STRUCTs
    as the embedded engine on the same checkpoint."""
    from engine_backend import LLMEngine
    from engine_backend.async_engine import AsyncLLMEngine
    from engine_backend.server import ServerThread, create_app

    sql = f"SELECT id, llm_extract('Extract the facts', review, {{'schema': '{SCHEMA}'}}) AS x FROM t ORDER BY id"
    _, embedded, _ = run(con, model_dir, sql)
    with AsyncLLMEngine(LLMEngine(model=model_dir)) as aengine, \
            ServerThread(create_app(aengine, "extract-key", aengine.model_name)) as srv:
        types, remote, _ = run(con, aengine.model_name, sql, backend="openai", base_url=srv.url,
                               api_key="extract-key")
        assert aengine.stats()["requests_submitted"] == 2  # the two distinct reviews went over HTTP
    assert str(types[1]).replace('"', "") == output_schema(SCHEMA).duckdb_type.replace('"', "")
    assert remote == embedded

"""One registry of the LLM functions: every layer (prompts, decoding, parsing, DuckDB, Spark, Arrow, the
rewriter's cost model) reads a function's facts from its ``FunctionSpec``, so a new function is one entry.

| function | DuckDB | Spark | decoding | parse |
|---|---|---|---|---|
| ``llm(instruction, field, ...)`` | VARCHAR | string | free text, ``max_tokens`` (default 32) | the text, stripped |
| ``llm_filter(instruction, field, ...)`` | BOOLEAN | boolean | ``choices=[" yes", " no"]`` | yes -> true |
| ``llm_classify(field, ..., labels)`` | VARCHAR | string | ``choices=[" " + label, ...]`` | the label |
| ``llm_score(instruction, field, ...)`` | INTEGER | int | ``choices=[" 1", ..., " 5"]`` | 1..5 |
| ``llm_extract(instruction, field, ..., {'schema': ...})`` | STRUCT of the schema | the same struct | JSON schema grammar | the typed STRUCT |

A function ``typed_by_schema`` has no fixed type: its value's type is its call's ``schema`` option
(``udf.extract``). In DuckDB each schema gets its own UDF registration (``llm_sql.duckdb_mode``); in Spark the
one ``llm_extract`` UDF answers JSON text (the entry's ``spark_type``) and the Catalyst analyzer rule
``TypeExtractCalls`` wraps each call in ``from_json`` of its schema's STRUCT (``udf.spark_udf``).

Aggregates are not per-row functions, so they have their own table, ``AGGREGATES`` (``AggregateSpec``), read by the
DuckDB rewrite, the UDF registrations and the pandas accessor (``udf.agg``):

| aggregate | rewritten to | DuckDB | Spark |
|---|---|---|---|
| ``llm_agg(instruction, field [, options])`` | ``llm_agg_list(instruction, <the group's values as a list> [, options])`` | VARCHAR | string |

The list function is an ordinary scalar UDF over a list; it is what DuckDB's ``list(field)`` and Spark's
``collect_list(field)`` feed (DuckDB mode and the Catalyst rule ``ResolveLLMAggregates`` write that for you).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pyarrow as pa

FILTER_CHOICES = {" yes": True, " no": False}
SCORE_CHOICES = {f" {i}": i for i in range(1, 6)}


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    duckdb_type: str  # the SQL type of its value in DuckDB
    spark_type: str  # ... and in Spark
    arrow_type: pa.DataType  # how the UDFs hand values back
    cue: str  # the last line of its prompt, after the fields
    has_instruction: bool  # its first argument is the instruction (llm_classify has labels instead)
    choices: Callable[[Any], dict[str, Any]] | None = None  # call -> {constrained output: SQL value}; None: free
    weight: float = 1.0  # relative cost per row (generated tokens), for ordering LLM predicates
    typed_by_schema: bool = False  # the value's type is the call's schema option (llm_extract)


REGISTRY: dict[str, FunctionSpec] = {s.name: s for s in (
    FunctionSpec("llm", "VARCHAR", "string", pa.string(), "Answer:", True, None, weight=4.0),
    FunctionSpec("llm_filter", "BOOLEAN", "boolean", pa.bool_(), "Answer yes or no:", True,
                 lambda call: dict(FILTER_CHOICES)),
    FunctionSpec("llm_classify", "VARCHAR", "string", pa.string(), "Label:", False,
                 lambda call: {" " + lbl: lbl for lbl in call.labels or ()}),
    FunctionSpec("llm_score", "INTEGER", "int", pa.int32(), "Score 1-5:", True, lambda call: dict(SCORE_CHOICES)),
    FunctionSpec("llm_extract", "VARCHAR", "string", pa.string(), "JSON:", True, None, weight=6.0,
                 typed_by_schema=True),
)}


@dataclass(frozen=True)
class AggregateSpec:
    name: str  # the aggregate as written in SQL
    list_function: str  # the scalar function over the group's values (a list) that answers it
    duckdb_type: str
    spark_type: str
    arrow_type: pa.DataType


AGGREGATES: dict[str, AggregateSpec] = {s.name: s for s in (
    AggregateSpec("llm_agg", "llm_agg_list", "VARCHAR", "string", pa.string()),
)}


def spec_of(function: str) -> FunctionSpec:
    try:
        return REGISTRY[function]
    except KeyError:
        raise ValueError(f"unknown LLM function {function!r}; expected one of {', '.join(REGISTRY)}") from None

"""DuckDB bindings: ``llm``, ``llm_filter``, ``llm_classify``, ``llm_score`` as vectorised Python UDFs.

This is the fallback path: the rewriter (``optimizer.rewrite``) lifts the LLM calls it can into a
stage of their own; shapes it cannot lift, and plain ``con.sql(...)`` on a connection where only
these functions are registered, run here. Each chunk DuckDB hands over goes through
``udf.batch.evaluate``, so it is still deduplicated, reordered, cached and sent as one ordered batch.

Signatures. DuckDB 2.0's ``create_function`` cannot overload a name, but a Python function with
``*args`` and ``parameters=None`` is registered as VARARGS of type ANY, which is what these are
(``type='arrow'``, ``null_handling='special'`` so NULL fields reach us):

| SQL | returns |
|---|---|
| ``llm(instruction, field, ... [, options])`` | VARCHAR |
| ``llm_filter(instruction, field, ... [, options])`` | BOOLEAN |
| ``llm_score(instruction, field, ... [, options])`` | INTEGER (1..5) |
| ``llm_classify(field, ..., labels VARCHAR[] [, options])`` | VARCHAR (one of the labels) |
| ``llm_agg_list(instruction, values LIST [, options])`` | VARCHAR (one answer for the list: ``udf.agg``) |

* Fields may be of any type; values are rendered by ``udf.prompts`` (NULL as ``null``, BLOBs decoded
  as UTF-8 with replacement characters, dates in ISO form, ...).
* Field names: a UDF does not see column names, so plain field arguments are named ``input`` (one
  field) or ``input1``, ``input2``, ... (by position). To name fields, pass a STRUCT:
  ``llm('sentiment', {'review': review, 'stars': stars})`` writes ``"review": ...`` and ``"stars": ...``.
  (The rewriter's lifted path names fields after their columns.)
* Options: a trailing STRUCT is the options struct (``{'max_tokens': 8, 'model': 'm'}``), except when it
  is the only field argument (then it is a named-fields struct). ``llm_classify``'s options come after
  the labels. Unknown options and wrong types fail the query with a ``ValueError``.
* A row whose fields are all NULL, or whose instruction is NULL, is NULL without a call. A row whose
  request fails is NULL; its reason goes to ``on_output(call, EvalOutput)``.
"""
from __future__ import annotations

from typing import Any, Callable

from udf.api import FUNCTIONS, EvalOutput, EvalSettings, LLMCall, ResultCache
from udf.arrow_calls import Route, Target, answer_batch


def register_udfs(con: Any, route: Route, settings: EvalSettings, result_cache: ResultCache | None = None,
                  on_output: Callable[[LLMCall, EvalOutput, Target], None] | None = None,
                  functions: tuple[str, ...] = FUNCTIONS) -> None:
    """Register the LLM functions on DuckDB connection ``con`` (replacing earlier registrations).

    ``route(model)`` gives the ``Target`` (backend and result-cache identity) of a model name (None = the
    session's default); ``on_output(call, output, target)`` receives each chunk's output (its ``StageStats``
    and per-row error reasons). Functions typed by their schema (``llm_extract``) are registered per schema
    with ``register_typed_udf``.
    """
    from udf.functions import registered_duckdb_type

    for name in functions:
        sql_type = registered_duckdb_type(name, settings.defaults)
        if sql_type is not None:
            register_typed_udf(con, name, name, sql_type, route, settings, result_cache, on_output)
    from udf.agg import register_duckdb  # llm_agg_list, which llm_sql.duckdb_mode rewrites llm_agg to

    register_duckdb(con, route, settings, result_cache, on_output)


def register_typed_udf(con: Any, sql_name: str, function: str, sql_type: str, route: Route, settings: EvalSettings,
                       result_cache: ResultCache | None = None, on_output=None) -> None:
    """Register ``function`` under ``sql_name`` with the SQL return type ``sql_type``."""
    udf = _make_udf(function, route, settings, result_cache, on_output)
    try:
        con.remove_function(sql_name)
    except Exception:
        pass
    con.create_function(sql_name, udf, None, sql_type, type="arrow", null_handling="special")


def _make_udf(function: str, route: Route, settings: EvalSettings, result_cache, on_output):
    # only *args: DuckDB reads the function's Python signature as the SQL one (VARARGS of ANY)
    def udf(*args: Any):
        return answer_batch(function, args, route, settings, result_cache=result_cache, on_output=on_output)

    udf.__name__ = function
    return udf

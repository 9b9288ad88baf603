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

import pyarrow as pa

from engine_backend.backends.base import Backend
from udf.api import FUNCTIONS, EvalOutput, EvalSettings, LLMCall, ResultCache, StageStats
from udf.arrow_calls import ARROW_TYPES, calls_of_batch
from udf.batch import evaluate
from udf.options import merge_options

_SQL_TYPES = {"llm": "VARCHAR", "llm_filter": "BOOLEAN", "llm_classify": "VARCHAR", "llm_score": "INTEGER"}


def register_udfs(con: Any, get_backend: Callable[[str | None], Backend], settings: EvalSettings,
                  result_cache: ResultCache | None = None,
                  model_id_for: Callable[[str | None], str] | None = None,
                  on_stats: Callable[[StageStats], None] | None = None,
                  on_output: Callable[[LLMCall, EvalOutput], None] | None = None,
                  functions: tuple[str, ...] = FUNCTIONS) -> None:
    """Register the LLM functions on DuckDB connection ``con`` (replacing earlier registrations).

    ``get_backend(model)`` gives the backend for a model name (None = the session's default);
    ``model_id_for(model)`` the model identity used in result-cache keys (default: "", which
    ``evaluate`` replaces by the identity of the backend that ``get_backend(model)`` returned).
    ``on_stats`` receives each chunk's ``StageStats``; ``on_output`` each chunk's call and output
    (per-row error reasons are in ``output.errors``).
    """
    model_id_for = model_id_for or (lambda model: "")
    for name in functions:
        if name not in FUNCTIONS:
            raise ValueError(f"unknown LLM function {name!r}; expected one of {', '.join(FUNCTIONS)}")
        fn = _make_udf(name, get_backend, settings, result_cache, model_id_for, on_stats, on_output)
        try:
            con.remove_function(name)
        except Exception:
            pass
        con.create_function(name, fn, None, _SQL_TYPES[name], type="arrow", null_handling="special")


def _make_udf(function: str, get_backend, settings: EvalSettings, result_cache, model_id_for, on_stats, on_output):
    out_type = ARROW_TYPES[function]

    def udf(*args: Any) -> pa.Array:
        n, rows, calls = calls_of_batch(function, args)
        values: list[Any] = [None] * n
        for call, idx in calls:
            model = merge_options(settings.defaults, call.options).get("model")
            out = evaluate(call, [rows[i] for i in idx], get_backend(model), settings=settings,
                           result_cache=result_cache, model_id=model_id_for(model))
            for i, v in zip(idx, out.values):
                values[i] = v
            if on_stats is not None:
                on_stats(out.stats)
            if on_output is not None:
                on_output(call, out)
        return pa.array(values, type=out_type)

    udf.__name__ = function
    return udf

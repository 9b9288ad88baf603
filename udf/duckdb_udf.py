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
from udf.batch import evaluate
from udf.functions import make_call
from udf.options import merge_options, validate_options

_ARROW_TYPES = {"llm": pa.string(), "llm_filter": pa.bool_(), "llm_classify": pa.string(), "llm_score": pa.int32()}
_SQL_TYPES = {"llm": "VARCHAR", "llm_filter": "BOOLEAN", "llm_classify": "VARCHAR", "llm_score": "INTEGER"}


def _pylist(arr: Any) -> list[Any]:
    return arr.to_pylist()


def _is_struct(arr: Any) -> bool:
    return pa.types.is_struct(arr.type)


def _is_list(arr: Any) -> bool:
    return pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type)


def split_args(function: str, args: tuple[Any, ...]) -> tuple[Any, list[Any], Any, Any]:
    """(instruction column | None, field columns, labels column | None, options column | None)."""
    args = list(args)
    instruction = labels = options = None
    if function != "llm_classify":
        if len(args) < 2:
            raise ValueError(f"{function}(instruction, field, ... [, options]) needs an instruction and at least "
                             "one field")
        instruction = args.pop(0)
        if len(args) >= 2 and _is_struct(args[-1]):
            options = args.pop()
    else:
        if args and _is_struct(args[-1]) and len(args) >= 3:
            options = args.pop()
        if len(args) < 2 or not (_is_list(args[-1]) or pa.types.is_null(args[-1].type)):
            raise ValueError("llm_classify(field, ..., labels [, options]) needs at least one field and then the "
                             "labels as a list of strings, e.g. ['positive', 'negative']")
        labels = args.pop()
    return instruction, args, labels, options


def _fields(columns: list[Any]) -> tuple[list[str], list[list[Any]]]:
    """Field names and per-field value lists, expanding named-field structs."""
    names: list[str] = []
    cols: list[list[Any]] = []
    plain = sum(not _is_struct(c) for c in columns)
    k = 0
    for c in columns:
        if _is_struct(c):
            rows = _pylist(c)
            for fld in c.type:
                names.append(fld.name)
                cols.append([None if r is None else r.get(fld.name) for r in rows])
        else:
            k += 1
            names.append("input" if plain == 1 else f"input{k}")
            cols.append(_pylist(c))
    return names, cols


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
    out_type = _ARROW_TYPES[function]

    def udf(*args: Any) -> pa.Array:
        instruction_col, field_cols, labels_col, options_col = split_args(function, args)
        n = len(field_cols[0]) if field_cols else 0
        names, cols = _fields(field_cols)
        instructions = _pylist(instruction_col) if instruction_col is not None else [None] * n
        labels = _pylist(labels_col) if labels_col is not None else [None] * n
        options = _pylist(options_col) if options_col is not None else [None] * n
        rows = list(zip(*cols)) if cols else [()] * n
        values: list[Any] = [None] * n

        # Rows with the same instruction, labels and options form one call (usually the whole chunk).
        groups: dict[tuple, list[int]] = {}
        calls: dict[tuple, LLMCall] = {}
        for i in range(n):
            if function != "llm_classify" and instructions[i] is None:
                continue  # NULL instruction -> NULL
            lbl = labels[i]
            opts = validate_options(options[i])  # clear ValueError for a bad options struct
            key = (instructions[i], None if lbl is None else tuple(lbl), opts)
            if key not in calls:
                calls[key] = make_call(function, instruction=instructions[i], field_names=names,
                                       labels=lbl if function == "llm_classify" else None, options=opts)
            groups.setdefault(key, []).append(i)

        for key, idx in groups.items():
            call = calls[key]
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

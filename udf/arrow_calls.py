"""The Arrow-batch core of the LLM functions, shared by the DuckDB and Spark UDFs.

Both engines hand a UDF its arguments as Arrow arrays with the same conventions (see
``udf.duckdb_udf``): an instruction, field columns (a STRUCT names its fields), labels for
``llm_classify``, an optional trailing options STRUCT. ``calls_of_batch`` turns one batch into
the ``LLMCall``s it holds and the rows each one answers; ``answer_batch`` answers them through
``udf.batch.evaluate``, each call on the model its ``model`` option names. A mode only supplies
its ``route`` (model name -> ``Target``) and what to do with each call's output.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

import pyarrow as pa

from engine_backend.backends.base import Backend, BackendError
from udf.api import EvalOutput, EvalSettings, LLMCall, ResultCache
from udf.functions import make_call
from udf.options import merge_options, validate_options
from udf.registry import REGISTRY, spec_of

ARROW_TYPES = {name: spec.arrow_type for name, spec in REGISTRY.items()}


def _pylist(arr: Any) -> list[Any]:
    return arr.to_pylist()


def _is_struct(arr: Any) -> bool:
    return pa.types.is_struct(arr.type)


def is_list(arr: Any) -> bool:
    return pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type)


def split_args(function: str, args: tuple[Any, ...]) -> tuple[Any, list[Any], Any, Any]:
    """(instruction column | None, field columns, labels column | None, options column | None)."""
    args = list(args)
    instruction = labels = options = None
    if spec_of(function).has_instruction:
        if not args:
            raise ValueError(f"{function}(instruction [, field, ...] [, options]) needs an instruction")
        instruction = args.pop(0)
        if len(args) >= 2 and _is_struct(args[-1]):
            options = args.pop()
    else:
        if args and _is_struct(args[-1]) and len(args) >= 3:
            options = args.pop()
        if len(args) < 2 or not (is_list(args[-1]) or pa.types.is_null(args[-1].type)):
            raise ValueError("llm_classify(field, ..., labels [, options]) needs at least one field and then the "
                             "labels as a list of strings, e.g. ['positive', 'negative']")
        labels = args.pop()
    return instruction, args, labels, options


def field_columns(columns: list[Any]) -> tuple[list[str], list[list[Any]]]:
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


def calls_of_batch(function: str, args: tuple[Any, ...]) -> tuple[int, list[tuple], list[tuple[LLMCall, list[int]]]]:
    """(rows in the batch, field tuples per row, [(call, row indices)]).

    Rows with the same instruction, labels and options form one call (usually the whole batch); a row
    whose instruction is NULL is in no call (its value is NULL). A bad options struct is a ValueError.
    """
    instruction_col, field_cols, labels_col, options_col = split_args(function, args)
    # No field: the instruction alone is the prompt (``llm('Say hi')``), one per row.
    n = len(field_cols[0]) if field_cols else len(instruction_col) if instruction_col is not None else 0
    names, cols = field_columns(field_cols)
    instructions = instruction_col.to_pylist() if instruction_col is not None else [None] * n
    labels = labels_col.to_pylist() if labels_col is not None else [None] * n
    options = options_col.to_pylist() if options_col is not None else [None] * n
    rows = list(zip(*cols)) if cols else [()] * n
    groups: dict[tuple, list[int]] = {}
    calls: dict[tuple, LLMCall] = {}
    has_instruction = spec_of(function).has_instruction
    for i in range(n):
        if has_instruction and instructions[i] is None:
            continue
        lbl = labels[i]
        opts = validate_options(options[i])
        key = (instructions[i], None if lbl is None else tuple(lbl), opts)
        if key not in calls:
            calls[key] = make_call(function, instruction=instructions[i], field_names=names,
                                   labels=None if has_instruction else lbl, options=opts)
        groups.setdefault(key, []).append(i)
    return n, rows, [(calls[k], idx) for k, idx in groups.items()]


@dataclass
class Target:
    """Where a call's model runs: its backend, the identity its answers are cached under, and (Spark) the pid of
    the node server it reached, for the statistics."""

    backend: Backend
    model_id: str = ""  # "" = the identity of the backend (udf.batch.backend_model_id)
    server_pid: int | None = None
    model: str | None = None  # the model's name in the session (statistics)
    model_dir: str | None = None  # the local checkpoint a served backend runs: its tokenizer sizes llm_agg's chunks


Route = Callable[[str | None], Target]  # the model a call names (None = the session's default) -> its Target


def answer_batch(function: str, args: tuple[Any, ...], route: Route, settings: EvalSettings, *,
                 result_cache: ResultCache | None = None,
                 on_output: Callable[[LLMCall, EvalOutput, Target], None] | None = None,
                 retry_backend_errors: bool = False, json_text: bool = False) -> pa.Array:
    """One Arrow batch of ``function``'s arguments in, one value per row out (NULL where a row failed).

    Each call of the batch goes to ``route(model)``, where ``model`` is its ``model`` option (or the session
    default's). With ``retry_backend_errors`` a call whose backend failed (after the backend's own retries) is
    routed again and evaluated once more from scratch, so no row is lost or answered twice; a second failure
    raises. ``on_output(call, output, target)`` sees every call's output (statistics, per-row reasons).
    ``json_text`` is for engines whose UDF types are fixed at registration (Spark): a function typed by its schema
    (``llm_extract``) answers each row's value as JSON text (a rule makes it the STRUCT: ``udf.extract``), and
    ``return_reasoning``, which would change any function's type, is refused.
    """
    from udf.extract import json_text as json_value
    from udf.routing import answer

    n, rows, calls = calls_of_batch(function, args)
    typed = spec_of(function).typed_by_schema
    as_json = json_text and typed
    values: list[Any] = [None] * n
    for call, idx in calls:
        if json_text and merge_options(settings.defaults, call.options).get("return_reasoning"):
            # Spark fixes a UDF's type at registration, and no rule types this one yet
            raise ValueError("return_reasoning is not available in Spark yet (DuckDB and pandas have it)")
        batch_rows = [rows[i] for i in idx]
        out, target = answer_retrying(
            function, lambda routed: answer(call, batch_rows, routed, settings=settings, result_cache=result_cache),
            route, retry_backend_errors)
        for i, v in zip(idx, out.values):
            values[i] = json_value(v) if as_json else v
        if on_output is not None:
            on_output(call, out, target)
    if as_json:
        return pa.array(values, type=pa.string())
    if not calls:  # no row was asked: NULLs of the function's type (a schema's is unknown: NULL-typed)
        return pa.array(values, type=pa.null() if typed else ARROW_TYPES[function])
    from udf.functions import arrow_type_of

    # one registration per type (schema, return_reasoning): every call of the batch has the first one's
    return pa.array(values, type=arrow_type_of(calls[0][0], settings.defaults))


def answer_retrying(function: str, answer: Callable[[Route], EvalOutput], route: Route,
                    retry_backend_errors: bool) -> tuple[EvalOutput, Target]:
    """``answer(route)`` for one call, and the first ``Target`` it reached (the statistics name it). With
    ``retry_backend_errors`` a backend failure (after the backend's own retries) routes again and answers once
    more from scratch, so no row is lost or answered twice; a second failure raises."""
    seen: list[Target] = []

    def routed(model: Any) -> Target:
        seen.append(route(model))
        return seen[-1]

    try:
        out = answer(routed)
    except BackendError as exc:
        if not retry_backend_errors:
            raise
        # The server went away mid-batch: routing again checks its health and restarts it.
        print(f"llm-sql: {function}: backend failed ({exc}); reconnecting and retrying the batch", file=sys.stderr)
        seen.clear()
        out = answer(routed)
    return out, seen[0]  # an answer routes its call before it asks anything

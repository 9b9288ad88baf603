"""Spark bindings: ``llm``, ``llm_filter``, ``llm_classify``, ``llm_score``, ``llm_extract`` as Arrow-vectorised UDFs.

Each is a ``pyspark.sql.functions.arrow_udf`` (Spark 4.1+; columns arrive as ``pyarrow`` arrays, so the
argument conventions are exactly DuckDB's, ``udf.arrow_calls``) taking a variable number of
columns. Every Arrow batch Spark hands a Python worker goes through ``udf.batch.evaluate``: rows whose
fields are all NULL are NULL without a call, the distinct tuples are ordered (GGR / lexicographic, see
``udf.batch``) and sent as ONE ordered request stream to the node's engine server, and the values come back
in the batch's row order.

SQL forms (the same as DuckDB's):

| SQL | returns |
|---|---|
| ``llm(instruction, field, ... [, options])`` | STRING |
| ``llm_filter(instruction, field, ... [, options])`` | BOOLEAN |
| ``llm_score(instruction, field, ... [, options])`` | INT (1..5) |
| ``llm_classify(field, ..., labels ARRAY<STRING> [, options])`` | STRING (one of the labels) |
| ``llm_extract(instruction, field, ..., named_struct('schema', 'a STRING, b ARRAY<DOUBLE>'))`` | STRUCT of the schema |
| ``llm_agg(instruction, field [, options])`` (an aggregate, ``make_agg_udfs``) | STRING per group |
| ``llm_agg_list(instruction, values ARRAY [, options])`` | STRING per list |

``llm_extract``'s schema is a field list (Spark's or DuckDB's spelling) or a JSON schema (``udf.extract``). A
Python UDF's return type is fixed when it is registered, so the UDF answers each row's value as JSON text,
already checked against the schema (NULL with the reason where the model could not produce it, e.g. cut off
at ``max_tokens``, default 256), and the Catalyst extension's analyzer rule ``TypeExtractCalls`` wraps the call
in ``from_json(..., <the schema's STRUCT>)``, with the optimiser on or off. The schema must be a constant in
the call (a session default ``schema`` is not seen by the rule). Without the extension ``llm_extract`` returns
that JSON text (a STRING).

* Plain field arguments are named ``input`` (one) or ``input1``, ``input2``, ... (by position). To name
  fields, pass one STRUCT: ``llm('sentiment', struct(review, stars))`` (Spark names ``struct(col)``'s
  fields after the columns) or ``named_struct('review', review, 'stars', stars)``.
* Options: a trailing STRUCT, ``named_struct('max_tokens', 8)``, except when it is the only field
  argument. ``llm_classify``'s options come after the labels, ``array('pos', 'neg')``.
* The DataFrame API (``llm_sql.functions``) calls the same UDFs with a struct of the given columns.

Backend. ``route(model)`` (a picklable callable baked into the UDF) returns a ``udf.arrow_calls.Target``
(backend, result-cache identity, server pid) inside the worker for the model a call names;
``llm_sql.spark_mode.WorkerRoute`` gives an ``OpenAIBackend`` on either the
node's embedded engine server (``llm_sql.node_engine``: started on first use under a file lock, shared by all
workers of the node, health-checked before each batch and restarted if it died) or an external
OpenAI-compatible endpoint. (``udf`` does not import ``llm_sql``: the callable is injected.)

Per-row errors and statistics. A failed row is NULL; its reason, and the batch's ``StageStats`` (rows in,
distinct inputs, LLM calls, prompt / cached prompt tokens, ...), go to a driver-side accumulator
(``StatsAccumulator``) that ``llm_sql.last_stats(spark)`` reads; reasons are also logged to the worker's
stderr (the executor log). Accumulator updates from a retried task are counted again (Spark semantics).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable

from udf.api import EvalSettings, ResultCache, StageStats

MAX_REASONS = 20
MAX_INTERVALS = 4096  # a call's batch intervals kept for last_stats' wall time (explain's actual LLM seconds)
_STAT_FIELDS = ("rows_in", "distinct_inputs", "llm_calls", "cache_hits", "null_inputs", "errors", "prompt_tokens",
                "cached_prompt_tokens", "generated_tokens", "solve_seconds", "llm_seconds", "rows_reasoned",
                "reasoning_tokens", "generated_tokens_saved", "llm_seconds_saved")


def call_key(call: Any) -> str:
    """A short name of an ``LLMCall`` (function, instruction, labels, fields, options), the same in every process:
    ``last_stats`` keeps each call's figures under it, and ``llm_sql.explain`` finds a stage's actuals by it."""
    import hashlib

    return hashlib.sha256(repr(call).encode()).hexdigest()[:16]


def stats_delta(s: StageStats, reasons: list[str], worker_pid: int, server_pid: int | None,
                call: Any = None) -> dict[str, Any]:
    d: dict[str, Any] = {name: getattr(s, name) for name in _STAT_FIELDS}
    d["batches"] = 1
    if call is not None:  # the call's own figures, and when its LLM work ran (wall clock: start, end)
        end = time.time()
        d["by_call"] = {call_key(call): {**d, "intervals": [(end - s.llm_seconds, end)]}}
    d["error_reasons"] = reasons[:MAX_REASONS]
    d["worker_pids"] = {worker_pid: 1}  # pid -> batches, so that a later snapshot can tell who worked since
    d["server_pids"] = {server_pid: 1} if server_pid is not None else {}
    d["rows_by_model"] = dict(s.rows_by_model)  # summed per name like the pid counts
    return d


def _accumulator_param():
    from pyspark.accumulators import AccumulatorParam

    class StatsParam(AccumulatorParam):
        """Sums numbers, per-pid counts and per-call figures; concatenates lists: ``error_reasons`` (the first
        ones kept), a call's ``intervals`` (the latest kept)."""

        def zero(self, value: dict) -> dict:
            return {}

        def addInPlace(self, a: dict, b: dict) -> dict:
            for k, v in b.items():
                if k == "intervals":
                    a[k] = (a.get(k, []) + list(v))[-MAX_INTERVALS:]
                elif isinstance(v, list):
                    a[k] = (a.get(k, []) + list(v))[:MAX_REASONS]
                elif isinstance(v, dict):
                    a[k] = self.addInPlace(dict(a.get(k, {})), v)
                else:
                    a[k] = a.get(k, 0) + v
            return a

    return StatsParam()


def new_accumulator(spark):
    return spark.sparkContext.accumulator({}, _accumulator_param())


def usable_cache(cache: ResultCache | None) -> ResultCache | None:
    """``cache`` if it opens in this worker (its path comes from the driver), else None with a note on stderr."""
    if cache is None:
        return None
    ok = _CACHE_OK.get(repr(cache))
    if ok is None:
        try:
            cache.get_many(["llm-sql-probe"])
            ok = True
        except Exception as exc:  # noqa: BLE001 - an unwritable cache dir must not fail the query
            print(f"llm-sql: result cache {cache!r} unusable on this worker ({exc}); running without it",
                  file=sys.stderr)
            ok = False
        _CACHE_OK[repr(cache)] = ok
    return cache if ok else None


_CACHE_OK: dict[str, bool] = {}  # per worker process: repr(cache) (names its file) -> it opened


def _reporter(function: str, what: str, accumulator) -> Callable[[Any, Any, Any], None]:
    """``on_output`` for a UDF: each failed ``what`` (row, group) logged to the worker's stderr (the executor log,
    the first five), and the batch's statistics added to the driver's accumulator."""
    def report(call, out, target) -> None:
        reasons = [e for e in out.errors if e is not None]
        for e in reasons[:5]:
            print(f"llm-sql: {function}: {what} failed: {e}", file=sys.stderr)
        if accumulator is not None:
            accumulator.add(stats_delta(out.stats, reasons, os.getpid(), getattr(target, "server_pid", None), call))

    return report


def make_arrow_udf(function: str, route: Callable[[str | None], Any], settings: EvalSettings,
                   accumulator=None, *, result_cache: ResultCache | None = None):
    """The Spark UDF for ``function`` (register it with ``spark.udf.register(name, udf)``).

    ``route(model)`` (picklable) gives a ``udf.arrow_calls.Target`` inside the worker; ``result_cache``
    (picklable, e.g. ``llm_sql.cache.ResultCache``) is used there when ``settings.result_cache`` says so.
    """
    import pyarrow as pa
    from pyspark.sql import functions as F

    if not hasattr(F, "arrow_udf"):
        raise ImportError("llm-sql's Spark UDFs need pyspark >= 4.1 (pyspark.sql.functions.arrow_udf)")
    from udf.registry import spec_of

    spec = spec_of(function)

    report = _reporter(function, "row", accumulator)

    def run(*args: pa.Array) -> pa.Array:
        from udf.arrow_calls import answer_batch

        # A server lost mid-batch is restarted by routing again and the call redone from scratch; a second
        # failure fails the task (Spark's task retry is the next level).
        return answer_batch(function, args, route, settings, result_cache=usable_cache(result_cache),
                            on_output=report, retry_backend_errors=True, json_text=True)

    run.__name__ = function
    run.__annotations__ = {"args": pa.Array, "return": pa.Array}  # real types: this module defers annotations
    return F.arrow_udf(run, spec.spark_type)


def make_agg_udfs(route: Callable[[str | None], Any], settings: EvalSettings, accumulator=None, *,
                  result_cache: ResultCache | None = None) -> dict[str, Any]:
    """The Spark UDFs of the LLM aggregate (``udf.agg``), by name: ``llm_agg_list(instruction, values ARRAY [,
    options])``, a scalar Arrow UDF answering every group (row) of a batch together, and ``llm_agg(instruction,
    field [, options])``, a grouped-aggregate Arrow UDF answering one group per call. The Catalyst extension's
    ``ResolveLLMAggregates`` rewrites the second to the first over ``collect_list(field)``; without the extension
    (or with ``llm_sql.optimize=false``) ``llm_agg`` still works, one group at a time, and Spark refuses to mix it
    with other aggregates in one SELECT."""
    import pyarrow as pa
    from pyspark.sql import functions as F

    from udf.registry import AGGREGATES

    spec = AGGREGATES["llm_agg"]

    report = _reporter(spec.name, "group", accumulator)

    def run_lists(*args: pa.Array) -> pa.Array:
        from udf.agg import answer_list_batch

        return answer_list_batch(args, route, settings, result_cache=usable_cache(result_cache), on_output=report,
                                 retry_backend_errors=True)

    def run_group(*args: pa.Array) -> str:
        from udf.agg import answer_list_batch

        if len(args) not in (2, 3):
            raise ValueError(f"{spec.name}(instruction, field [, options]) takes 2 or 3 arguments, got {len(args)}")
        instructions = {v for v in args[0].to_pylist() if v is not None}
        if len(instructions) > 1:
            raise ValueError(f"{spec.name}'s instruction must be the same for every row of a group")
        if not instructions:
            return None  # type: ignore[return-value]
        batch = [pa.array([instructions.pop()], type=pa.string()),
                 pa.array([args[1].to_pylist()], type=pa.list_(args[1].type))]
        if len(args) == 3:
            batch.append(args[2].slice(0, 1))
        return answer_list_batch(tuple(batch), route, settings, result_cache=usable_cache(result_cache),
                                 on_output=report, retry_backend_errors=True)[0].as_py()

    run_lists.__name__ = spec.list_function
    run_lists.__annotations__ = {"args": pa.Array, "return": pa.Array}
    run_group.__name__ = spec.name
    run_group.__annotations__ = {"args": pa.Array, "return": str}  # a scalar per group: a grouped aggregate
    return {spec.list_function: F.arrow_udf(run_lists, spec.spark_type),
            spec.name: F.arrow_udf(run_group, spec.spark_type)}

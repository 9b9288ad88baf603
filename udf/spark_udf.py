"""Spark bindings: ``llm``, ``llm_filter``, ``llm_classify``, ``llm_score`` as Arrow-vectorised UDFs.

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

* Plain field arguments are named ``input`` (one) or ``input1``, ``input2``, ... (by position). To name
  fields, pass one STRUCT: ``llm('sentiment', struct(review, stars))`` (Spark names ``struct(col)``'s
  fields after the columns) or ``named_struct('review', review, 'stars', stars)``.
* Options: a trailing STRUCT, ``named_struct('max_tokens', 8)``, except when it is the only field
  argument. ``llm_classify``'s options come after the labels, ``array('pos', 'neg')``.
* The DataFrame API (``llm_sql.functions``) calls the same UDFs with a struct of the given columns.

Backend. ``get_backend()`` (a picklable callable baked into the UDF) returns ``(backend, server pid or
None)`` inside the worker; ``llm_sql.spark_mode.worker_backend`` gives an ``OpenAIBackend`` on either the
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
from typing import Any, Callable

from udf.api import FUNCTIONS, EvalSettings, ResultCache, StageStats

SPARK_TYPES = {"llm": "string", "llm_filter": "boolean", "llm_classify": "string", "llm_score": "int"}
MAX_REASONS = 20
_STAT_FIELDS = ("rows_in", "distinct_inputs", "llm_calls", "cache_hits", "null_inputs", "errors", "prompt_tokens",
                "cached_prompt_tokens", "generated_tokens", "solve_seconds", "llm_seconds")


def stats_delta(s: StageStats, reasons: list[str], worker_pid: int, server_pid: int | None) -> dict[str, Any]:
    d: dict[str, Any] = {name: getattr(s, name) for name in _STAT_FIELDS}
    d["batches"] = 1
    d["error_reasons"] = reasons[:MAX_REASONS]
    d["worker_pids"] = {worker_pid: 1}  # pid -> batches, so that a later snapshot can tell who worked since
    d["server_pids"] = {server_pid: 1} if server_pid is not None else {}
    return d


def _accumulator_param():
    from pyspark.accumulators import AccumulatorParam

    class StatsParam(AccumulatorParam):
        """Sums numbers and per-pid counts; concatenates ``error_reasons`` (capped)."""

        def zero(self, value: dict) -> dict:
            return {}

        def addInPlace(self, a: dict, b: dict) -> dict:
            for k, v in b.items():
                if k == "error_reasons":
                    a[k] = (a.get(k, []) + list(v))[:MAX_REASONS]
                elif isinstance(v, dict):
                    merged = dict(a.get(k, {}))
                    for pid, n in v.items():
                        merged[pid] = merged.get(pid, 0) + n
                    a[k] = merged
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


def make_arrow_udf(function: str, get_backend: Callable[[], tuple[Any, int | None]], settings: EvalSettings,
                   accumulator=None, *, result_cache: ResultCache | None = None, model_id: str = ""):
    """The Spark UDF for ``function`` (register it with ``spark.udf.register(name, udf)``).

    ``result_cache`` (picklable, e.g. ``llm_sql.cache.ResultCache``) and ``model_id`` are passed to
    ``udf.batch.evaluate`` in the workers, where ``settings.result_cache`` decides whether it is used.
    """
    import pyarrow as pa
    from pyspark.sql import functions as F

    if not hasattr(F, "arrow_udf"):
        raise ImportError("llm-sql's Spark UDFs need pyspark >= 4.1 (pyspark.sql.functions.arrow_udf)")
    if function not in FUNCTIONS:
        raise ValueError(f"unknown LLM function {function!r}; expected one of {', '.join(FUNCTIONS)}")
    from udf.arrow_calls import ARROW_TYPES, calls_of_batch

    out_type = ARROW_TYPES[function]

    def run(*args: pa.Array) -> pa.Array:
        from engine_backend.backends.base import BackendError
        from udf.batch import evaluate

        n, rows, calls = calls_of_batch(function, args)
        values: list[Any] = [None] * n
        for call, idx in calls:
            batch_rows = [rows[i] for i in idx]
            backend, server_pid = get_backend()
            cache = usable_cache(result_cache)
            try:
                out = evaluate(call, batch_rows, backend, settings=settings, result_cache=cache, model_id=model_id)
            except BackendError as exc:
                # The server went away mid-batch (after the backend's own retries): get_backend() checks
                # health and restarts it; the group is evaluated again from scratch, so no row is lost or
                # answered twice. A second failure fails the task (Spark's task retry is the next level).
                print(f"llm-sql: {function}: backend failed ({exc}); reconnecting and retrying the batch",
                      file=sys.stderr)
                backend, server_pid = get_backend()
                out = evaluate(call, batch_rows, backend, settings=settings, result_cache=cache, model_id=model_id)
            for i, v in zip(idx, out.values):
                values[i] = v
            reasons = [e for e in out.errors if e is not None]
            for e in reasons[:5]:
                print(f"llm-sql: {function}: row failed: {e}", file=sys.stderr)
            if accumulator is not None:
                accumulator.add(stats_delta(out.stats, reasons, os.getpid(), server_pid))
        return pa.array(values, type=out_type)

    run.__name__ = function
    run.__annotations__ = {"args": pa.Array, "return": pa.Array}  # real types: this module defers annotations
    return F.arrow_udf(run, SPARK_TYPES[function])

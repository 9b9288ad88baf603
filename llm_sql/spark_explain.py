"""``llm_sql.explain`` in Spark: the plan through the Catalyst rules, and each LLM stage's estimates.

    spark = llm_sql.spark_session(model=DIR)
    print(llm_sql.explain(spark, "SELECT id FROM reviews WHERE llm_filter('Positive?', struct(review))"))
    print(llm_sql.explain(df, analyze=True))          # a DataFrame; runs it, estimates beside actuals

The plan is Spark's optimised logical plan, after the llm-sql rules (``optimizer/catalyst``): the cheap predicates
split off, the distinct-tuple ``Aggregate``, its ``Sort`` and the ``Join ... <=>`` back. The rules' stages come from
``io.llmsql.catalyst.LLMStages``: for each LLM call in a ``Project``, a ``Filter`` or the ``ArrowEvalPython`` node
Spark moves it into, whose child calls no LLM, a plan of the rows the UDF will be invoked on (its own argument
columns) and, for a deduplicated call, the rows before deduplication. The driver runs those two small plans (no LLM: they stop below the call), decodes the arguments as
the UDF does (``udf.arrow_calls.calls_of_batch``) and estimates the call with ``llm_sql.estimate.estimate_call``:
the same figures as DuckDB mode's (requests, tokenised prompt tokens, prefix hits, generated tokens, seconds), on
the backend the workers use. For the node's engine server (``llm_sql.node_engine``) the tokenizer is the
checkpoint's, and the prefix cache, scheduler limits and measured batches are the server's own
(``OpenAIBackend.server_cost``); in local mode that is every worker's server, on a cluster the driver's node's.

A call that reads another LLM call's output is listed without estimates (counting its inputs would call the LLM),
and so is ``llm_agg`` (how each group is chunked is decided when it runs). A row-bounded plan (LIMIT) says that its
counts are upper bounds.

``analyze=True`` estimates first (probing a backend that has measured too few batches), then runs the query to a
``noop`` sink and puts each call's actual figures beside its estimates: requests, tokens and hits as the workers
reported them (``last_stats(spark).by_call``), and as LLM seconds the wall time during which any of the call's
batches was being answered (the workers' batches overlap on one engine: their sum would count it twice).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from llm_sql.explain_text import estimate_lines, routing_line


@dataclass
class SparkExplanation:
    """``plan``: Spark's optimised logical plan (text); ``stages``: one record per LLM call; with ``analyze``,
    ``actual`` (``last_stats``) and the run's seconds."""

    plan: str
    stages: list[dict[str, Any]]
    bounded: bool = False  # a LIMIT / OFFSET: the model is called on fewer rows than counted
    actual: Any = None
    probe_seconds: float = 0.0
    run_seconds: float | None = None

    @property
    def analyzed(self) -> bool:
        return self.actual is not None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"plan": self.plan, "stages": self.stages, "bounded": self.bounded}
        if self.actual is not None:
            d.update(actual=self.actual.as_dict(), probe_seconds=self.probe_seconds, run_seconds=self.run_seconds)
        return d

    def __str__(self) -> str:
        lines = [] if self.stages else ["no LLM calls: the query runs unchanged"]
        for s in self.stages:
            lines.append(f"stage {s['stage']}: {s['call']}")
            if s.get("fields"):
                lines.append(f"  fields:              {', '.join(s['fields'])}")
            if s.get("field_order"):
                lines.append(f"  field order:         {', '.join(s['field_order'])}")
            if s.get("distinct_inputs") is not None:
                dedup = " (the rules deduplicate)" if s.get("deduplicated") else ""
                lines.append(f"  rows in / distinct:  {s['rows_in']} / {s['distinct_inputs']}{dedup}")
                lines.extend(estimate_lines(s))
            else:
                lines.append(f"  inputs:              not counted ({s['not_counted']})")
            if s.get("routing"):
                lines.append(f"  routing:             {routing_line(s['routing'])}")
        if self.bounded:
            lines.append("note: the query has a LIMIT: Spark stops calling the model once it has its rows, so the "
                         "counts above are upper bounds (and the workers' reports of a task cut short can be lost)")
        lines.append("optimised plan (after the llm-sql Catalyst rules):")
        lines.extend("  " + line for line in self.plan.rstrip().splitlines())
        if self.actual is not None:
            a = self.actual
            lines.append(f"ran in {self.run_seconds:.3f} s: {a.llm_calls} LLM requests, {a.batches} batches, "
                         f"{a.errors} errors" + (f"; before it, {self.probe_seconds:.2f} s probed the backend"
                                                 if self.probe_seconds else ""))
        return "\n".join(lines)

    __repr__ = __str__


def explain(spark_or_df: Any, query: str | None = None, analyze: bool = False) -> SparkExplanation:
    """Explain a Spark SQL ``query`` on a session, or a DataFrame (``query`` None); see the module doc."""
    from pyspark.sql import DataFrame

    from llm_sql import spark_mode

    if isinstance(spark_or_df, DataFrame):
        if query is not None:
            raise TypeError("llm_sql.explain(df) explains the DataFrame; give a SQL query with the session instead")
        df, spark = spark_or_df, spark_or_df.sparkSession
    else:
        if not isinstance(query, str):
            raise TypeError("llm_sql.explain(spark, query): the query must be SQL text")
        spark, df = spark_or_df, spark_or_df.sql(query)
    if spark_mode.is_connect(spark):
        raise RuntimeError("llm_sql.explain needs a classic Spark session (the driver reads the optimised plan); "
                           "Spark Connect clients can run EXPLAIN to see the rules' plan")
    if not spark_mode.extension_loaded(spark):
        raise RuntimeError("llm_sql.explain in Spark needs the Catalyst extension: build the session with "
                           "llm_sql.spark_session(...) (or set spark.sql.extensions and spark.jars)")
    reg = spark_mode._registration(spark)
    optimized = df._jdf.queryExecution().optimizedPlan()
    probed: dict[int, float] | None = {} if analyze else None  # backend -> seconds its probe took
    stages = [_stage_record(spark, reg, i + 1, j, probed) for i, j in enumerate(_stages(spark).find(optimized))]
    bounded = bool(_stages(spark).bounded(optimized))
    if not analyze:
        return SparkExplanation(optimized.toString(), stages, bounded)
    spark_mode.reset_stats(spark)
    start = time.perf_counter()
    df.write.format("noop").mode("overwrite").save()  # runs every stage; the rows go nowhere
    run_seconds = time.perf_counter() - start
    actual = spark_mode.last_stats(spark)
    for info in stages:
        ran = actual.by_call.get(info.get("call_key", ""))
        if ran is not None:
            info["actual"] = dict(ran, llm_seconds=ran["llm_wall_seconds"])
    return SparkExplanation(optimized.toString(), stages, bounded, actual=actual, probe_seconds=sum(probed.values()),
                            run_seconds=run_seconds)


def _stages(spark: Any) -> Any:
    return spark.sparkContext._jvm.io.llmsql.catalyst.LLMStages


def _frame(spark: Any, plan: Any) -> Any:
    from pyspark.sql import DataFrame

    return DataFrame(_stages(spark).dataFrame(spark._jsparkSession, plan), spark)


SCALAR_NODES = ("Project", "Filter", "ArrowEvalPython", "BatchEvalPython")  # LLMStages' countable nodes


def _stage_record(spark: Any, reg: Any, index: int, stage: Any, probed: dict[int, float] | None) -> dict[str, Any]:
    from udf.api import FUNCTIONS
    from udf.routing import describe
    from udf.spark_udf import call_key

    info: dict[str, Any] = {"stage": index, "call": stage.sql(), "function": stage.function(),
                            "node": stage.node(), "deduplicated": bool(stage.deduplicated())}
    if stage.function() not in FUNCTIONS:  # llm_agg_list: the aggregate over collect_list (udf.agg)
        info["not_counted"] = "an LLM aggregate: how each group is chunked is decided when it runs"
        return info
    calls, _ = _calls(spark, stage.signature(), stage.function())
    if calls:  # the call the UDF will see (instruction, fields, labels, options), whatever its rows
        call = calls[0][0]
        info.update(fields=list(call.field_names), call_key=call_key(call))
        routing = describe(call, reg.settings.defaults)
        if routing is not None:
            info["routing"] = routing
    if stage.inputs() is None:
        info["not_counted"] = ("its inputs come from another LLM call" if stage.node() in SCALAR_NODES
                               else f"an LLM call inside a {stage.node()}: its inputs are known when it runs")
        return info
    _estimate(spark, reg, stage, info, probed)
    return info


def _calls(spark: Any, plan: Any, function: str) -> tuple[list[tuple], list[tuple]]:
    """([(LLMCall, its row indices)], the rows' field tuples) of the UDF argument rows ``plan`` computes, decoded as
    the UDF decodes an Arrow batch (``udf.arrow_calls.calls_of_batch``)."""
    from udf.arrow_calls import calls_of_batch

    table = _frame(spark, plan).toArrow()
    args = tuple(table.column(i).combine_chunks() for i in range(table.num_columns))
    _, rows, calls = calls_of_batch(function, args)
    return calls, rows


def _estimate(spark: Any, reg: Any, stage: Any, info: dict[str, Any], probed: dict[int, float] | None) -> None:
    """Count the stage's rows and estimate its call on the driver; no LLM call. ``probed`` (analyze): first probe a
    backend that has measured too little (``probe_if_unmeasured``), noting the seconds there."""
    from llm_sql.estimate import call_target, estimate_call, probe_if_unmeasured
    from udf.options import merge_options
    from udf.spark_udf import call_key

    info["rows_in"] = _frame(spark, stage.rowsIn()).count()
    calls, rows = _calls(spark, stage.inputs(), stage.function())
    if not calls:  # every instruction NULL, or no rows
        info["distinct_inputs"] = 0
        return
    # the signature's call; an instruction or options that vary by row give several: the one with the most rows
    call, idx = next((c for c in calls if call_key(c[0]) == info.get("call_key")), None) or \
        max(calls, key=lambda c: len(c[1]))
    opts = merge_options(reg.settings.defaults, call.options)
    target = call_target(reg.route, opts)
    if probed is not None and id(target.backend) not in probed:
        probed[id(target.backend)] = probe_if_unmeasured(target.backend)
    estimate_call(call, opts, [rows[i] for i in idx], target, reg.settings, reg.result_cache, info)
    if info.get("est_seconds"):
        info["est_seconds_source"] += ("; the engine's time: each Arrow batch's HTTP and worker time (tens of ms "
                                       "here) comes on top")
    if len(calls) > 1:
        note = f"{len(calls)} different instructions or options in one call: estimated one of them"
        info["est_note"] = f"{note}; {info['est_note']}" if info.get("est_note") else note

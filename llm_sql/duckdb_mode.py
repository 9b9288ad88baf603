"""DuckDB mode: run a query through the rewriter, its stages through ``udf.batch.evaluate``, the rest in DuckDB.

For each stage of ``optimizer.rewrite.plan_query`` (in order): run the stage SQL (the distinct input tuples),
evaluate the call once per tuple (dedup, reordering, the result cache and one ordered stream to the backend
are ``evaluate``'s job), register the answers as an Arrow view ``<table>(__llm_in_0.., __llm_out)`` on the
connection, then run the rewritten query, which reads the answers by null-safe lookups. Calls the rules do not
lift stay function calls and the fallback UDFs (``udf.duckdb_udf``) answer them; if a stage or the rewritten
query does not bind (an odd shape the rules misjudged), the original query runs on the fallback UDFs instead:
slower, never wrong. The aggregate ``llm_agg(instruction, field)`` is rewritten first, optimiser on or off, to
``llm_agg_list(instruction, list(field))``: DuckDB groups, a UDF answers every group of a chunk together
(``udf.agg``).
"""
from __future__ import annotations

import hashlib
import time
from typing import Any

import duckdb
import pyarrow as pa
import sqlglot
from sqlglot import exp

from llm_sql.explain_text import estimate_lines, routing_line
from llm_sql.session import QueryStats, Session
from optimizer.rewrite import QueryPlan, Stage, plan_query
from optimizer.rules import field_names, llm_calls, parse_call
from optimizer.rules.calls import Unliftable
from optimizer.rules.lookup import OUT_COLUMN
from udf.api import FUNCTIONS
from udf.registry import REGISTRY
from udf.functions import arrow_type_of

_SESSIONS: dict[int, tuple[Any, Session]] = {}  # id(raw connection) -> (connection, session)


def name_fields(sql: str, names=FUNCTIONS) -> str:
    """Pass each call's fields as one named STRUCT, so the UDF writes the same field names as a lifted stage
    (the column name for a plain column, else the expression's SQL)."""
    try:
        tree = sqlglot.parse_one(sql, dialect="duckdb")
    except sqlglot.errors.SqlglotError:
        return sql  # DuckDB will report the error (or run syntax sqlglot does not know)
    calls = llm_calls(tree, names)
    if not calls:
        return sql
    specs = []
    for call in calls:  # names from the calls as written, before any is changed
        try:
            spec = parse_call(call)
        except Unliftable:
            continue
        if len(spec.fields) == 1 and isinstance(spec.fields[0], exp.Struct):
            continue
        if any(f.find(exp.Star) is not None or f.find(exp.Columns) is not None for f in spec.fields):
            continue
        specs.append((call, spec, field_names(spec.fields)))
    for call, spec, names_ in specs:  # innermost first; fields are moved, not copied
        struct = exp.Struct(expressions=[
            exp.PropertyEQ(this=exp.Literal.string(n), expression=f.this if isinstance(f, exp.Alias) else f)
            for n, f in zip(names_, spec.fields)])
        args = list(call.expressions)
        idx = next(i for i, a in enumerate(args) if a is spec.fields[0])
        args[idx: idx + len(spec.fields)] = [struct]
        call.set("expressions", args)
    return tree.sql(dialect="duckdb")


class LLMConnection:
    """A DuckDB connection whose ``.sql`` / ``.execute`` go through the optimiser; anything else is the
    connection's own attribute."""

    def __init__(self, con: duckdb.DuckDBPyConnection, session: Session):
        self.con = con
        self.session = session
        self._views: list[str] = []
        self._typed_udfs: set[str] = set()  # UDFs registered for a call's own SQL type (_fallback_sql), one per type
        self._before_stage = None  # explain(analyze=True): called with (plan, stage) before each stage runs

    # -- the optimised path ------------------------------------------------------------------------------
    def plan(self, query: str) -> QueryPlan:
        self.session.query_counter += 1
        return plan_query(query, {name: spec.weight for name, spec in REGISTRY.items()}, "duckdb", table_prefix=f"__llm_q{self.session.query_counter}_stage_",
                          cost=self._cost)

    def _cost(self, count_sql: str, per_row: float) -> float:
        """Order LLM predicates by (distinct inputs after the cheap predicates) x (estimated tokens per row)."""
        try:
            return per_row * max(1, int(self.con.sql(count_sql).fetchall()[0][0]))
        except duckdb.Error:
            return per_row * 1e6  # cannot count (e.g. correlated): assume large

    def _cleanup(self) -> None:
        for name in self._views:
            try:
                self.con.unregister(name)
            except Exception:
                pass
        self._views = []

    def _run_stage(self, stage: Stage, stats: QueryStats) -> None:
        from udf.multi_label import answer_pairs
        from udf.routing import answer

        dedup = self.session.settings.dedup
        # dedup off (for comparisons): every row's inputs go to the backend; the answers table keeps one per tuple
        inputs = self.con.sql(stage.sql if dedup else stage.rows_sql).to_arrow_table()
        columns = [inputs.column(i).to_pylist() for i in range(inputs.num_columns)]
        rows = list(zip(*columns)) if columns else []
        call, opts = stage_call(self.session, stage)
        if opts.get("multi_label"):
            if stage.join_sides is None:
                raise ValueError("multi_label applies to an llm_filter condition of an inner join between two "
                                 f"tables (one field from each): {stage.call_sql}")
            out = answer_pairs(call, rows, self.session.route, settings=self.session.settings,
                               result_cache=self.session.result_cache)
        else:
            out = answer(call, rows, self.session.route, settings=self.session.settings,
                         result_cache=self.session.result_cache)
        values = out.values
        if dedup:
            out.stats.rows_in = int(self.con.sql(stage.count_sql).fetchall()[0][0])
        else:
            first: dict[str, int] = {}
            for i, r in enumerate(rows):
                first.setdefault(repr(r), i)
            keep = sorted(first.values())
            inputs = inputs.take(pa.array(keep, type=pa.int64()))
            values = [values[i] for i in keep]
        stats.add(out.stats)
        reasons = [e for e in out.errors if e is not None]
        stats.error_reasons.extend(reasons[: max(0, 20 - len(stats.error_reasons))])
        table = inputs.append_column(OUT_COLUMN, pa.array(values, type=arrow_type_of(call, self.session.defaults)))
        self.con.register(stage.table, table)
        self._views.append(stage.table)
        s = out.stats
        stats.stages.append({
            "stage": stage.index, "call": stage.call_sql, "role": stage.role, "fields": list(stage.field_names),
            "field_order": list(s.field_order), "rows_in": s.rows_in, "distinct_inputs": s.distinct_inputs,
            "llm_calls": s.llm_calls, "cache_hits": s.cache_hits, "errors": s.errors,
            "prompt_tokens": s.prompt_tokens, "cached_prompt_tokens": s.cached_prompt_tokens,
            "prefix_hit_rate": s.cached_prompt_tokens / s.prompt_tokens if s.prompt_tokens else 0.0,
            "generated_tokens": s.generated_tokens, "solve_seconds": s.solve_seconds, "llm_seconds": s.llm_seconds,
            "rows_by_model": dict(s.rows_by_model), "rows_reasoned": s.rows_reasoned,
            "reasoning_tokens": s.reasoning_tokens, "routing": dict(s.routing)})

    def _prepare(self, query: str, stats: QueryStats, parameters: Any = None,
                 aggregates: bool = False) -> tuple[str | None, bool]:
        """Run the stages; return (the SQL to run, whether it is rewritten), or (None, False) for a query
        without LLM calls (it runs unchanged). ``aggregates``: the query calls ``llm_agg_list`` (``udf.agg``)."""
        if not self.session.optimize or parameters is not None:
            sql = self._fallback_sql(query)
            if sql == query and not _has_calls(query) and not aggregates:
                return None, False
            stats.fallback_reason = ("optimize=False: every call through the per-row UDF" if not self.session.optimize
                                     else "a query with parameters runs on the fallback UDFs")
            return sql, False
        try:
            plan = self.plan(query)
        except sqlglot.errors.SqlglotError:
            return None, False  # let DuckDB report its own syntax error (or run syntax sqlglot does not know)
        if not plan.has_llm_calls:
            return (query, False) if aggregates else (None, False)
        try:
            for stage in plan.stages:
                if self._before_stage is not None:
                    self._before_stage(plan, stage)
                self._run_stage(stage, stats)
        except duckdb.Error as exc:
            self._fall_back(stats, exc)
            return self._fallback_sql(query), False
        return (self._fallback_sql(plan.sql) if plan.fallbacks else plan.sql), bool(plan.stages)

    def _fallback_sql(self, sql: str) -> str:
        """``sql`` for the fallback UDFs: fields named (``name_fields``), and every call whose own options give it
        another SQL type than its function's UDF has (``llm_extract``'s schema, ``return_reasoning``) renamed to a
        UDF registered with that type."""
        sql = name_fields(sql)
        lowered = sql.lower()
        if "llm_extract" not in lowered and "return_reasoning" not in lowered:
            return sql
        from udf.duckdb_udf import register_typed_udf
        from udf.functions import duckdb_type_of, make_call, registered_duckdb_type

        tree = sqlglot.parse_one(sql, dialect="duckdb")
        for call in llm_calls(tree, FUNCTIONS):
            if call.name.lower() != "llm_extract" and "return_reasoning" not in call.sql().lower():
                continue
            try:
                spec = parse_call(call)
                llm_call = make_call(spec.function, spec.instruction, [f"f{i}" for i in range(len(spec.fields))],
                                     spec.labels, spec.options)
                sql_type = duckdb_type_of(llm_call, self.session.defaults)
                if sql_type == registered_duckdb_type(spec.function, self.session.defaults):
                    continue
            except (Unliftable, ValueError) as exc:
                raise ValueError(f"{call.name} needs a literal schema / return_reasoning option: {exc}") from None
            name = f"{spec.function}_{hashlib.sha256(sql_type.encode()).hexdigest()[:12]}"
            if name not in self._typed_udfs:
                register_typed_udf(self.con, name, spec.function, sql_type, self.session.route,
                                   self.session.udf_settings, self.session.result_cache, self.session.on_output)
                self._typed_udfs.add(name)
            call.set("this", name)
        return tree.sql(dialect="duckdb")

    def _fall_back(self, stats: QueryStats, exc: Exception) -> None:
        self._cleanup()
        stats.fallback_reason = f"the rewritten query did not run ({type(exc).__name__}: {str(exc).splitlines()[0]})"

    def _materialize(self, sql: str, parameters: Any):
        if _is_query(sql):
            rel = self.con.sql(sql) if parameters is None else self.con.execute(sql, parameters)
            return rel.to_arrow_table()
        if parameters is None:
            self.con.execute(sql)
        else:
            self.con.execute(sql, parameters)
        return None

    def _run(self, query: str, parameters: Any = None):
        """(True, arrow table or None) for a query with LLM calls; (False, None) for one that runs unchanged."""
        stats = self.session.current
        from udf.agg import rewrite_duckdb

        agg_query = rewrite_duckdb(query)  # llm_agg(i, x) -> llm_agg_list(i, list(x)): a scalar UDF over the group
        aggregates, query = agg_query != query, agg_query
        sql, rewritten = self._prepare(query, stats, parameters, aggregates)
        if sql is None:
            return False, None
        try:
            return True, self._materialize(sql, parameters)
        except duckdb.Error as exc:
            if not rewritten:
                raise
            self._fall_back(stats, exc)  # a shape the rules misjudged: the original on the fallback UDFs
            return True, self._materialize(self._fallback_sql(query), parameters)

    def _begin(self) -> QueryStats:
        self._cleanup()
        stats = QueryStats(optimized=self.session.optimize)
        self.session.current = stats
        return stats

    def _end(self, stats: QueryStats, start: float) -> None:
        stats.total_seconds = time.perf_counter() - start
        self.session.current = None
        self.session.last = stats

    def _result_name(self, table: pa.Table) -> str:
        name = f"__llm_result_{self.session.query_counter}_{id(table)}"
        self.con.register(name, table)
        self._views.append(name)
        return name

    def sql(self, query: str):
        """Like ``DuckDBPyConnection.sql``: a relation (materialised when the query calls the LLM), or None."""
        start = time.perf_counter()
        stats = self._begin()
        try:
            handled, table = self._run(query)
            if not handled:  # no LLM call: DuckDB's own lazy relation
                return self.con.sql(query)
            return None if table is None else self.con.sql(f'SELECT * FROM "{self._result_name(table)}"')
        finally:
            self._end(stats, start)

    query = sql

    def execute(self, query: str, parameters: Any = None):
        """Like ``DuckDBPyConnection.execute`` (returns the connection with the result pending)."""
        start = time.perf_counter()
        stats = self._begin()
        try:
            handled, table = self._run(query, parameters)
            if not handled:
                return self.con.execute(query) if parameters is None else self.con.execute(query, parameters)
            if table is None:
                return self.con
            return self.con.execute(f'SELECT * FROM "{self._result_name(table)}"')
        finally:
            self._end(stats, start)

    def explain(self, query: str, count: bool = True, analyze: bool = False) -> "Explanation":
        return explain(self, query, count=count, analyze=analyze)

    def last_stats(self) -> QueryStats:
        return self.session.last

    def close(self) -> None:
        self._cleanup()
        _SESSIONS.pop(id(self.con), None)
        self.session.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.con, name)

    def __enter__(self) -> "LLMConnection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _has_calls(sql: str) -> bool:
    try:
        return bool(llm_calls(sqlglot.parse_one(sql, dialect="duckdb"), FUNCTIONS))
    except sqlglot.errors.SqlglotError:
        return False


def _is_query(sql: str) -> bool:
    try:
        tree = sqlglot.parse_one(sql, dialect="duckdb")
    except sqlglot.errors.SqlglotError:
        return False
    return isinstance(tree, (exp.Query,))


# -- the front door ---------------------------------------------------------------------------------------
def register(con: duckdb.DuckDBPyConnection | LLMConnection, **options: Any) -> LLMConnection:
    """Attach the LLM functions to ``con`` and return a wrapper whose ``.sql`` goes through the optimiser.

    Options (``llm_sql.config``): ``model=DIR`` or ``models={name: DIR | URL | dict}`` with ``model=`` naming the
    default, ``backend='embedded'|'openai'|'vllm'`` (or a Backend), ``base_url``, ``api_key``,
    ``optimize``, ``dedup``, ``reorder``, ``cache``, ``cache_path``, ``on_error='null'|'raise'``, ``progress``,
    engine options (``device``, ``dtype``, ``kv_cache_memory``, ``enable_prefix_caching``,
    ``swap_space``, ``preemption``, ``speculative``), and function
    defaults (``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``seed``, ``system``, ``max_field_chars``,
    ``reorder_fields``...). Anything else is a ``TypeError``.
    """
    if isinstance(con, LLMConnection):
        con = con.con
    if not isinstance(con, duckdb.DuckDBPyConnection):
        raise TypeError(f"llm_sql.register expects a DuckDB connection, got {type(con).__name__}")
    old = _SESSIONS.pop(id(con), None)
    if old is not None:
        old[1].close()
    wrapper = attach(con, Session(**options))
    _SESSIONS[id(con)] = (con, wrapper)
    return wrapper


def attach(con: duckdb.DuckDBPyConnection, session: Session) -> LLMConnection:
    """``con`` answering through ``session``: its UDFs registered on ``con`` (the fallback path calls them) and
    the wrapper; ``register`` without a new session or the registry (``df.llm.join`` runs on a private one)."""
    from udf.duckdb_udf import register_udfs

    register_udfs(con, session.route, session.udf_settings, result_cache=session.result_cache,
                  on_output=session.on_output)
    return LLMConnection(con, session)


def _wrapper(con: Any) -> LLMConnection:
    if isinstance(con, LLMConnection):
        return con
    entry = _SESSIONS.get(id(con))
    if entry is None or entry[0] is not con:
        raise ValueError("this connection is not registered: call llm_sql.register(con, ...) first")
    return entry[1]


def sql(con: Any, query: str):
    return _wrapper(con).sql(query)


def last_stats(con: Any) -> QueryStats:
    return _wrapper(con).session.last


# -- explain ----------------------------------------------------------------------------------------------
class Explanation:
    """What ``explain`` found: the plan, one record per stage (counts and estimates), and with ``analyze`` the
    run's statistics (``actual``: ``last_stats``; each stage record's ``actual``: its stage in it)."""

    def __init__(self, plan: QueryPlan, stages: list[dict[str, Any]], actual: QueryStats | None = None,
                 probe_seconds: float = 0.0, result_rows: int | None = None):
        self.plan, self.stages, self.actual = plan, stages, actual
        self.sql = plan.sql
        self.probe_seconds, self.result_rows = probe_seconds, result_rows

    @property
    def analyzed(self) -> bool:
        return self.actual is not None

    def as_dict(self) -> dict[str, Any]:
        d = {"original_sql": self.plan.original_sql, "rewritten_sql": self.plan.sql, "stages": self.stages,
             "fallbacks": [{"call": c, "reason": r} for c, r in self.plan.fallbacks]}
        if self.actual is not None:
            d.update(actual=self.actual.as_dict(), probe_seconds=self.probe_seconds, result_rows=self.result_rows)
        return d

    def __str__(self) -> str:
        lines = []
        if not self.plan.has_llm_calls:
            lines.append("no LLM calls: the query runs unchanged")
        for s in self.stages:
            dep = f" (after stage {', '.join(map(str, s['depends_on']))})" if s["depends_on"] else ""
            lines.append(f"stage {s['stage']} [{s['role']}]{dep}: {s['call']}")
            lines.append(f"  fields:              {', '.join(s['fields'])}")
            if s.get("field_order"):
                lines.append(f"  field order:         {', '.join(s['field_order'])}")
            if s.get("distinct_inputs") is not None:
                lines.append(f"  rows in / distinct:  {s['rows_in']} / {s['distinct_inputs']}")
                lines.extend(estimate_lines(s))
            elif s.get("count_error"):
                lines.append(f"  inputs:              not counted ({s['count_error']})")
            else:
                lines.append("  inputs:              counted when the earlier stages have run (explain(..., "
                             "analyze=True) counts them then)")
            lines.append(f"  inputs SQL:          {s['sql']}")
            if s.get("routing"):
                lines.append(f"  routing:             {routing_line(s['routing'])}")
        for call, why in self.plan.fallbacks:
            lines.append(f"fallback UDF: {call} ({why})")
        lines.append(f"rewritten SQL: {self.plan.sql}")
        if self.actual is not None:
            a = self.actual
            lines.append(f"ran: {self.result_rows if self.result_rows is not None else 0} result rows in "
                         f"{a.total_seconds:.3f} s (LLM {a.llm_seconds:.3f} s, reordering {a.solve_seconds:.3f} s)"
                         + (f"; of the total, {self.probe_seconds:.2f} s probed the backend first"
                            if self.probe_seconds else ""))
            if a.fallback_reason:
                lines.append(f"fallback: {a.fallback_reason}")
        return "\n".join(lines)

    __repr__ = __str__


def stage_call(session: Session, stage: Stage) -> tuple[Any, dict[str, Any]]:
    """The stage's ``LLMCall`` and its options merged with the session's defaults."""
    from udf.functions import make_call
    from udf.options import merge_options

    call = make_call(stage.function, instruction=stage.instruction, field_names=stage.field_names,
                     labels=stage.labels, options=stage.options)
    return call, merge_options(session.defaults, call.options)


def _routing_plan(w: LLMConnection, stage: Stage) -> dict[str, Any] | None:
    """How the stage's rows will be routed: reasoning, the router, a cascade (``udf.routing.describe``)."""
    from udf.multi_label import MAX_VALUES
    from udf.routing import describe

    call, opts = stage_call(w.session, stage)
    if stage.join_sides and opts.get("multi_label"):
        return {"kind": "multi-label join", "max_values": MAX_VALUES, "fields": list(stage.field_names)}
    return describe(call, w.session.defaults)


def _stage_info(w: LLMConnection, s: Stage) -> dict[str, Any]:
    info: dict[str, Any] = {"stage": s.index, "call": s.call_sql, "role": s.role, "fields": list(s.field_names),
                            "depends_on": list(s.depends_on), "sql": s.sql, "table": s.table, "uses": s.uses}
    routing = _routing_plan(w, s)
    if routing is not None:
        info["routing"] = routing
    return info


def _count_and_estimate(w: LLMConnection, s: Stage, info: dict[str, Any]) -> None:
    """Count the stage's inputs and estimate its requests, tokens, prefix hits and seconds (``llm_sql.estimate``;
    no LLM call)."""
    from llm_sql.estimate import call_target, estimate_call

    session = w.session
    try:
        info["rows_in"] = int(w.con.sql(s.count_sql).fetchall()[0][0])
        # the rows the batch path gets: the distinct tuples (dedup) or every row (dedup off, each its own request)
        rows = w.con.sql(s.sql if session.settings.dedup else s.rows_sql).fetchall()
    except duckdb.Error as exc:
        info["count_error"] = str(exc).splitlines()[0]
        return
    call, opts = stage_call(session, s)
    estimate_call(call, opts, rows, call_target(session.route, opts), session.settings, session.result_cache, info,
                  multi_label=bool(s.join_sides and opts.get("multi_label")))


def explain(con: Any, query: str, count: bool = True, analyze: bool = False) -> Explanation:
    """The rewritten SQL and the stages. ``count``: for the stages that read only the base tables, the input
    counts and the estimates of ``llm_sql.estimate`` (requests, tokenised prompt tokens, expected prefix hits,
    generated tokens, seconds from the backend's measured throughput); no LLM is called.

    ``analyze``: run the query (its result is dropped), estimating each stage just before it runs, so that the
    stages after an earlier one are counted too, and put the run's statistics beside the estimates
    (``Explanation.actual`` is ``last_stats``). A backend that has measured fewer batches than its time model has
    terms is probed first (``llm_sql.estimate.probe``, a few small batches) so the time can be estimated."""
    from udf.agg import rewrite_duckdb

    w = _wrapper(con)
    if analyze:  # the query as written: .sql rewrites llm_agg itself, and so runs it as a query with LLM calls
        return _analyze(w, query)
    plan = w.plan(rewrite_duckdb(query))
    stages = []
    for s in plan.stages:
        info = _stage_info(w, s)
        if count and not s.depends_on:
            _count_and_estimate(w, s, info)
        stages.append(info)
    return Explanation(plan, stages)


def _analyze(w: LLMConnection, query: str) -> Explanation:
    from llm_sql.estimate import call_target, probe_if_unmeasured
    from udf.agg import rewrite_duckdb

    seen: dict[str, Any] = {"plan": None, "probe": 0.0}
    stages: list[dict[str, Any]] = []

    def before(plan: QueryPlan, stage: Stage) -> None:
        seen["plan"] = plan
        info = _stage_info(w, stage)
        seen["probe"] += probe_if_unmeasured(call_target(w.session.route, stage_call(w.session, stage)[1]).backend)
        _count_and_estimate(w, stage, info)
        stages.append(info)

    w._before_stage = before
    try:
        rel = w.sql(query)
        result_rows = len(rel.fetchall()) if rel is not None else None
    finally:
        w._before_stage = None
    actual = w.session.last
    plan = seen["plan"]
    if plan is None:  # no stage ran (no LLM call, or every call on the fallback UDFs): nothing to set beside
        query = rewrite_duckdb(query)
        plan = QueryPlan(query, query, has_llm_calls=_has_calls(query))
    by_index = {s["stage"]: s for s in actual.stages}
    for info in stages:
        ran = by_index.get(info["stage"])
        if ran is not None:
            info["actual"] = ran
    return Explanation(plan, stages, actual=actual, probe_seconds=seen["probe"], result_rows=result_rows)

"""The DuckDB query planner around LLM calls: ``plan_query(sql) -> QueryPlan``.

Each liftable LLM call becomes a *stage*: the SQL that selects the DISTINCT input tuples of the call from
the call's FROM scope, after the scope's cheap (non-LLM) WHERE conjuncts and, for a call that is not itself
an earlier LLM predicate, after the LLM predicates of the same scope. The executor runs the stages in order
(a later stage's SQL may read an earlier stage's table), evaluates each stage's distinct inputs once, stores
the answers as ``<table>(__llm_in_0, ..., __llm_in_k, __llm_out)`` and then runs ``QueryPlan.sql``, where each
lifted call is a null-safe lookup into its table. Calls the rules cannot lift stay function calls that the
fallback UDFs answer (``QueryPlan.fallbacks`` says which and why): slower, never wrong.

Pure: no database, no LLM. ``cost`` (optional) estimates a stage's cost from the SQL that counts its distinct
inputs, to order LLM predicates; by default a static estimate from the function and the prompt size is used.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import sqlglot
from sqlglot import exp

from optimizer.rules import (CallSpec, Unliftable, call_key, conjoin, contains_llm_call, field_names,
                             hoist_join_predicates, is_cheap, is_volatile, join_sides, llm_calls, lookup_expr,
                             order_llm_predicates, owner_select, parse_call, references_outside, selects_post_order,
                             sources_of, split_conjuncts, stage_select, unliftable_reason, visible_ctes)

# name -> relative cost per row (free text generates more tokens than a label); callers pass their registry's
DEFAULT_FUNCTIONS = {"llm": 4.0, "llm_filter": 1.0, "llm_classify": 1.0, "llm_score": 1.0}


@dataclass
class Stage:
    index: int
    table: str  # where the executor stores the answers
    function: str
    instruction: str | None
    labels: tuple[str, ...] | None
    options: tuple[tuple[str, Any], ...]
    field_names: tuple[str, ...]
    field_sql: tuple[str, ...]
    sql: str  # SELECT DISTINCT <fields> AS __llm_in_i ... : the distinct input tuples
    count_sql: str  # SELECT COUNT(*) over the same rows before DISTINCT: the rows the call would see
    rows_sql: str  # the same inputs without DISTINCT (one per row: for runs with dedup turned off)
    role: str  # "filter" (a WHERE conjunct) or "projection" (SELECT list, GROUP BY, HAVING, ORDER BY)
    call_sql: str  # the call as written
    depends_on: tuple[int, ...] = ()  # earlier stages whose tables ``sql`` reads
    uses: int = 1  # occurrences of the identical call answered by this stage
    # a join condition between two tables: the table (alias) each field reads, else None (rules/joins)
    join_sides: tuple[str, ...] | None = None

    @property
    def num_fields(self) -> int:
        return len(self.field_names)


@dataclass
class QueryPlan:
    original_sql: str
    sql: str  # the rewritten query (== original when nothing was lifted)
    stages: list[Stage] = field(default_factory=list)
    fallbacks: list[tuple[str, str]] = field(default_factory=list)  # (call SQL, why it was not lifted)
    has_llm_calls: bool = False

    @property
    def rewritten(self) -> bool:
        return bool(self.stages)

    def describe(self) -> str:
        lines = []
        for s in self.stages:
            dep = f" after stage {', '.join(map(str, s.depends_on))}" if s.depends_on else ""
            lines.append(f"stage {s.index} [{s.role}{dep}] {s.call_sql}  ->  {s.table}"
                         f"{' (used ' + str(s.uses) + 'x)' if s.uses > 1 else ''}")
            lines.append(f"  fields: {', '.join(s.field_names)}")
            lines.append(f"  inputs: {s.sql}")
        for call, why in self.fallbacks:
            lines.append(f"fallback UDF: {call}  ({why})")
        lines.append(f"rewritten: {self.sql}")
        return "\n".join(lines)


def static_cost(spec: CallSpec, weights: Mapping[str, float] = DEFAULT_FUNCTIONS) -> float:
    """Rough tokens per row: instruction and labels plus a share per field, weighted by output length."""
    prompt = len(spec.instruction or "") / 4 + sum(len(label) for label in spec.labels or ()) / 4 + 32 * len(spec.fields)
    return weights.get(spec.function, 1.0) * prompt


def _rows_sql(sel: exp.Select, dialect: str) -> str:
    rows = sel.copy()
    rows.set("distinct", None)
    return rows.sql(dialect=dialect)


def _count_sql(sel: exp.Select, dialect: str) -> str:
    rows = sel.copy()
    rows.set("distinct", None)
    return exp.select("COUNT(*)").from_(rows.subquery("__llm_rows")).sql(dialect=dialect)


def plan_query(sql: str, llm_functions: Iterable[str] | Mapping[str, float] = DEFAULT_FUNCTIONS,
               dialect: str = "duckdb", *, table_prefix: str = "__llm_stage_",
               cost: Callable[[str, float], float] | None = None) -> QueryPlan:
    """``llm_functions``: the LLM functions' names, or name -> relative cost per row (``DEFAULT_FUNCTIONS``)."""
    weights = ({n.lower(): float(w) for n, w in llm_functions.items()} if isinstance(llm_functions, Mapping)
               else {n.lower(): DEFAULT_FUNCTIONS.get(n.lower(), 1.0) for n in llm_functions})
    names = frozenset(weights)
    tree = sqlglot.parse_one(sql, dialect=dialect)
    plan = QueryPlan(original_sql=sql, sql=sql)
    if not llm_calls(tree, names):
        return plan
    plan.has_llm_calls = True
    planner = _Planner(names, dialect, table_prefix, cost, plan, weights)
    for select in selects_post_order(tree):
        planner.plan_select(select)
    for call in llm_calls(tree, names):  # what is left is answered by the fallback UDFs
        if all(call.sql(dialect=dialect) != c for c, _ in plan.fallbacks):
            plan.fallbacks.append((call.sql(dialect=dialect), planner.reasons.get(id(call), "not in a SELECT scope")))
    if plan.stages:
        plan.sql = tree.sql(dialect=dialect)
    return plan


class _Planner:
    def __init__(self, names, dialect, prefix, cost, plan: QueryPlan, weights: Mapping[str, float]):
        self.names, self.dialect, self.prefix, self.cost, self.plan = names, dialect, prefix, cost, plan
        self.weights = weights
        self.by_key: dict[tuple[str, str], Stage] = {}
        self.reasons: dict[int, str] = {}
        self.table_of: dict[str, int] = {}
        self.origin: dict[str, str] = {}  # lookup SQL -> the call it replaced (for field names)
        self.joined: set[int] = set()  # calls that were join conditions

    # -- helpers ---------------------------------------------------------------------------------------
    def _own_calls(self, node: exp.Expression, select: exp.Select) -> list[exp.Expression]:
        return [c for c in llm_calls(node, self.names) if owner_select(c) is select]

    def _spec(self, call: exp.Expression, select: exp.Select) -> CallSpec | None:
        try:
            spec = parse_call(call)
        except Unliftable as exc:
            self.reasons[id(call)] = str(exc)
            return None
        if any(contains_llm_call(f, self.names) for f in spec.fields):
            self.reasons[id(call)] = "an argument is an LLM call that could not be lifted"
            return None
        why = unliftable_reason(call, select, spec.fields, self.names)
        if why:
            self.reasons[id(call)] = why
            return None
        return spec

    def _names(self, fields: tuple[exp.Expression, ...]) -> tuple[str, ...]:
        names = field_names(fields)
        return tuple(self.origin.get(f.sql(dialect=self.dialect), n) for f, n in zip(fields, names))

    def _depends(self, node: exp.Expression) -> tuple[int, ...]:
        deps = {self.table_of[t.name] for t in node.find_all(exp.Table) if t.name in self.table_of}
        return tuple(sorted(deps))

    def _conj_cost(self, pred: exp.Expression, select: exp.Select, cheap: list[exp.Expression],
                   ctes: list[exp.CTE]) -> float:
        total = 0.0
        for call in self._own_calls(pred, select):
            try:
                spec = parse_call(call)
            except Unliftable:
                continue
            est = static_cost(spec, self.weights)
            if self.cost is not None:
                count_sql = exp.select("COUNT(*)").from_(
                    stage_select(select, spec.fields, cheap, ctes).subquery("__llm_count")).sql(dialect=self.dialect)
                est = self.cost(count_sql, est)
            total += est
        return total

    def _lift(self, call: exp.Expression, select: exp.Select, conditions: list[exp.Expression],
              ctes: list[exp.CTE], role: str) -> exp.Expression | None:
        spec = self._spec(call, select)
        if spec is None:
            return None
        key = call_key(call)
        stage = self.by_key.get((key, str(id(select))))
        if stage is None:
            sel = stage_select(select, spec.fields, conditions, ctes)
            stage_sql = sel.sql(dialect=self.dialect)
            stage = self.by_key.get((key, stage_sql))
            if stage is None:
                index = len(self.plan.stages)
                table = f"{self.prefix}{index}"
                stage = Stage(index=index, table=table, function=spec.function, instruction=spec.instruction,
                              labels=spec.labels, options=spec.options, field_names=self._names(spec.fields),
                              field_sql=tuple(f.sql(dialect=self.dialect) for f in spec.fields), sql=stage_sql,
                              count_sql=_count_sql(sel, self.dialect), rows_sql=_rows_sql(sel, self.dialect),
                              role=role, call_sql=call.sql(dialect=self.dialect), depends_on=self._depends(sel),
                              uses=0, join_sides=join_sides(spec.fields) if id(call) in self.joined else None)
                self.plan.stages.append(stage)
                self.table_of[table] = index
                self.by_key[(key, stage_sql)] = stage
            self.by_key[(key, str(id(select)))] = stage
        stage.uses += 1
        new = lookup_expr(stage.table, spec.fields)
        self.origin[new.sql(dialect=self.dialect)] = stage.call_sql
        call.replace(new)
        return new

    # -- one SELECT scope --------------------------------------------------------------------------------
    def plan_select(self, select: exp.Select) -> None:
        if not self._own_calls(select, select):
            return
        ctes = visible_ctes(select)
        if ctes is None:
            for call in self._own_calls(select, select):
                self.reasons[id(call)] = "an LLM call inside a recursive CTE"
            return
        for pred in hoist_join_predicates(select, self.names):  # inner joins' LLM conditions are WHERE conjuncts
            self.joined.update(id(c) for c in llm_calls(pred, self.names))
        sources = sources_of(select)
        where = select.args.get("where")
        conjuncts = split_conjuncts(where)
        cheap = [c for c in conjuncts if is_cheap(c, self.names, sources)]
        llm_preds = [c for c in conjuncts if contains_llm_call(c, self.names)]
        others = [c for c in conjuncts if c not in cheap and c not in llm_preds]  # volatile / correlated
        if len(llm_preds) > 1:
            llm_preds = order_llm_predicates(llm_preds, lambda p: self._conj_cost(p, select, cheap, ctes))

        # Cheap predicates first, then the LLM predicates from the cheapest; each LLM predicate's stage runs
        # on the rows that pass every conjunct before it.
        done: list[exp.Expression] = []
        lifted_preds: list[exp.Expression] = []
        for pred in llm_preds:
            for call in self._own_calls(pred, select):
                new = self._lift(call, select, cheap + done, ctes, "filter")
                if call is pred and new is not None:
                    pred = new
            lifted_preds.append(pred)
            # a predicate that still calls the fallback UDF or reads volatile values is not a safe pre-filter
            if not contains_llm_call(pred, self.names) and not is_volatile(pred) \
                    and not references_outside(pred, sources):
                done.append(pred)
        if where is not None and len(conjuncts) > 1:
            new_order = cheap + others + lifted_preds
            where.set("this", conjoin([p if p.parent is None else p.copy() for p in new_order]))
        for key in ("expressions", "group", "having", "order"):
            part = select.args.get(key)
            for node in part if isinstance(part, list) else [part]:
                if node is None:
                    continue
                for call in self._own_calls(node, select):
                    self._lift(call, select, cheap + done, ctes, "projection")
        for call in self._own_calls(select, select):
            if id(call) not in self.reasons:
                self._spec(call, select)  # records why
            self.reasons.setdefault(id(call), "an LLM call in a clause the rewriter does not lift")

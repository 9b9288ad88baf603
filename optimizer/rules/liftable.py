"""Can a call be lifted into a stage? ``None`` if yes, else the reason it stays a (fallback) UDF call."""
from __future__ import annotations

from typing import Iterable

from sqlglot import exp

from optimizer.rules.predicates import is_volatile, references_outside, sources_of

# Clauses of a SELECT whose expressions are evaluated on the rows that pass WHERE (or on groups of them).
LIFTABLE_CLAUSES = {"expressions", "where", "group", "having", "order"}


def _clause(call: exp.Expression, select: exp.Select) -> str | None:
    node = call
    while node.parent is not None and node.parent is not select:
        node = node.parent
    return node.arg_key if node.parent is select else None


def limited_scan(select: exp.Select) -> bool:
    """LIMIT with no ORDER BY, grouping, DISTINCT or aggregate: DuckDB stops reading early, so a stage over
    every input would do more work than the per-chunk UDF."""
    if select.args.get("limit") is None and select.args.get("offset") is None:
        return False
    if select.args.get("order") or select.args.get("group") or select.args.get("distinct"):
        return False
    return not any(e.find(exp.AggFunc) for e in select.expressions)


def unliftable_reason(call: exp.Expression, select: exp.Select, fields: tuple[exp.Expression, ...],
                      names: Iterable[str]) -> str | None:
    clause = _clause(call, select)
    if limited_scan(select):
        return "an LLM call under LIMIT without ORDER BY (the UDF answers only the rows DuckDB reads)"
    if clause not in LIFTABLE_CLAUSES:
        return f"an LLM call in the {clause or 'unknown'} clause"
    # Between the call and its SELECT: no window, lambda or aggregate FILTER clause.
    node = call.parent
    while node is not None and node is not select:
        if isinstance(node, exp.Window):
            return "an LLM call inside a window function"
        if isinstance(node, exp.Lambda):
            return "an LLM call inside a lambda"
        if isinstance(node, exp.Filter):
            return "an LLM call inside an aggregate FILTER"
        node = node.parent
    aliases = {e.alias.lower() for e in select.expressions if isinstance(e, exp.Alias)}
    sources = sources_of(select)
    for f in fields:
        if f.find(exp.Star) is not None or f.find(exp.Columns) is not None:
            return "an LLM call over a star or COLUMNS(...) argument"
        if f.find(exp.AggFunc) is not None or f.find(exp.Window) is not None:
            return "an LLM call over an aggregate or window result"
        if is_volatile(f):
            return "an LLM call over a volatile expression"
        if references_outside(f, sources):
            return "an LLM call over a correlated (outer) column"
        if clause != "where":
            for col in f.find_all(exp.Column):
                if not col.table and col.name.lower() in aliases:
                    return f"an LLM call over the select alias {col.name!r}"
    return None

"""The SQL that selects a call's distinct input tuples from the call's FROM scope."""
from __future__ import annotations

from sqlglot import exp

from optimizer.rules.lookup import IN_PREFIX


def stage_select(select: exp.Select, fields: tuple[exp.Expression, ...], conditions: list[exp.Expression],
                 ctes: list[exp.CTE]) -> exp.Select:
    """``WITH <visible CTEs> SELECT DISTINCT f0 AS __llm_in_0, ... FROM <the scope's FROM and joins>
    WHERE <conditions>``. Every part is a copy: the input tree is not changed."""
    out = exp.Select(distinct=exp.Distinct())
    out.set("expressions", [exp.alias_((f.this if isinstance(f, exp.Alias) else f).copy(), f"{IN_PREFIX}{i}")
                            for i, f in enumerate(fields)])
    if select.args.get("from_") is not None:
        out.set("from_", select.args["from_"].copy())
    if select.args.get("joins"):
        out.set("joins", [j.copy() for j in select.args["joins"]])
    if conditions:
        where = conditions[0].copy()
        for c in conditions[1:]:
            where = exp.and_(where, c.copy())
        out.set("where", exp.Where(this=where))
    if ctes:
        out.set("with_", exp.With(expressions=[c.copy() for c in ctes]))
    return out

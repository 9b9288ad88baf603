"""Replace a call by a null-safe lookup into its stage's result table."""
from __future__ import annotations

from sqlglot import exp

IN_PREFIX = "__llm_in_"
OUT_COLUMN = "__llm_out"


def lookup_expr(table: str, fields: tuple[exp.Expression, ...]) -> exp.Expression:
    """``(SELECT s.__llm_out FROM table AS s WHERE s.__llm_in_0 IS NOT DISTINCT FROM <field_0> AND ...)``.

    The stage table holds each distinct input tuple once, so the scalar subquery yields one row or none
    (NULL: the row was never asked for, which only happens where the query discards it anyway)."""
    alias = f"{table}_s"
    conds = [exp.NullSafeEQ(this=exp.column(f"{IN_PREFIX}{i}", table=alias),
                            expression=(f.this if isinstance(f, exp.Alias) else f).copy())
             for i, f in enumerate(fields)]
    where = conds[0]
    for c in conds[1:]:
        where = exp.and_(where, c)
    sub = (exp.select(exp.column(OUT_COLUMN, table=alias))
           .from_(exp.to_table(table).as_(alias))
           .where(where))
    return exp.Subquery(this=sub)

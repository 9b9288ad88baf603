"""Names of the fields in the prompt: the column name for a plain column, else the alias or the SQL text."""
from __future__ import annotations

from sqlglot import exp


def field_names(fields: tuple[exp.Expression, ...]) -> tuple[str, ...]:
    def short(e: exp.Expression) -> str:
        if isinstance(e, exp.Alias):
            return e.alias
        if isinstance(e, exp.Column):
            return e.name
        return e.sql(dialect="duckdb")

    names = [short(e) for e in fields]
    if len(set(names)) < len(names):  # t.name and u.name: keep them apart
        names = [n if names.count(n) == 1 else f.sql(dialect="duckdb") for n, f in zip(names, fields)]
    return tuple(names)

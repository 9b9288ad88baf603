"""The CTEs a SELECT can read: every WITH around it, and inside a CTE body only the CTEs defined before it."""
from __future__ import annotations

from sqlglot import exp


def _with_of(node: exp.Expression) -> exp.With | None:
    w = node.args.get("with_") or node.args.get("with")
    return w if isinstance(w, exp.With) else None


def visible_ctes(select: exp.Select) -> list[exp.CTE] | None:
    """Outermost first. ``None`` when the select sits in a recursive CTE (not liftable)."""
    levels: list[list[exp.CTE]] = []
    child: exp.Expression = select
    child_cte: exp.CTE | None = None
    node: exp.Expression | None = select
    while node is not None:
        w = _with_of(node)
        if w is not None:
            ctes = list(w.expressions)
            if child is w:  # we came up from inside one of this WITH's CTEs
                if w.args.get("recursive"):
                    return None
                inner = child_cte
                ctes = ctes[: ctes.index(inner)] if inner in ctes else ctes
            levels.append(ctes)
        if isinstance(node, exp.CTE):
            child_cte = node
        child = node
        node = node.parent
    return [c for level in reversed(levels) for c in level]

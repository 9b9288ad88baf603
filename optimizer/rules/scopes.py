"""Walk the SELECT scopes of a statement in dependency order: nested queries and earlier CTEs first."""
from __future__ import annotations

from sqlglot import exp

_FIRST = ("with_", "with")


def _children(node: exp.Expression) -> list[exp.Expression]:
    keys = sorted(node.args, key=lambda k: 0 if k in _FIRST else 1)  # a WITH before the body that reads it
    out = []
    for key in keys:
        value = node.args[key]
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, exp.Expression):
                out.append(v)
    return out


def selects_post_order(tree: exp.Expression) -> list[exp.Select]:
    """Every ``Select`` in the tree, each after every ``Select`` nested in it and after the CTEs it can read."""
    out: list[exp.Select] = []
    stack: list[tuple[exp.Expression, bool]] = [(tree, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            if isinstance(node, exp.Select):
                out.append(node)
            continue
        stack.append((node, True))
        for child in reversed(_children(node)):
            stack.append((child, False))
    return out


def owner_select(node: exp.Expression) -> exp.Select | None:
    """The nearest enclosing ``Select`` (the scope whose rows the node is evaluated on)."""
    parent = node.parent
    while parent is not None and not isinstance(parent, exp.Select):
        parent = parent.parent
    return parent

"""WHERE conjuncts: split them, tell cheap ones from LLM ones, and order the LLM ones by estimated cost."""
from __future__ import annotations

from typing import Callable, Iterable

from sqlglot import exp

from optimizer.rules.calls import contains_llm_call

# Functions whose value at stage time may differ from the value when the query runs.
VOLATILE = {"random", "rand", "uuid", "gen_random_uuid", "uuidv4", "uuidv7", "nextval", "currval", "setseed",
            "now", "current_timestamp", "current_time", "current_date", "get_current_timestamp",
            "get_current_time", "transaction_timestamp", "today", "localtimestamp", "localtime"}
_VOLATILE_TYPES = tuple(t for t in (getattr(exp, n, None) for n in ("Rand", "Uuid", "CurrentTimestamp", "CurrentTime",
                                                                     "CurrentDate", "Randn")) if t is not None)


def split_conjuncts(where: exp.Expression | None) -> list[exp.Expression]:
    """Top-level AND terms (parentheses around one are dropped)."""
    if where is None:
        return []
    node = where.this if isinstance(where, exp.Where) else where
    out: list[exp.Expression] = []
    stack = [node]
    while stack:
        n = stack.pop()
        while isinstance(n, exp.Paren):
            n = n.this
        if isinstance(n, exp.And):
            stack.extend([n.expression, n.this])
        else:
            out.append(n)
    return out


def conjoin(terms: list[exp.Expression]) -> exp.Expression | None:
    """``t1 AND t2 AND ...`` over the terms themselves, not copies (the planner knows moved calls by identity);
    None for no term."""
    if not terms:
        return None
    return terms[0] if len(terms) == 1 else exp.and_(*terms, copy=False)


def is_volatile(node: exp.Expression) -> bool:
    for n in node.walk():
        if isinstance(n, _VOLATILE_TYPES):
            return True
        if isinstance(n, exp.Func):
            name = (n.name if isinstance(n, exp.Anonymous) else n.sql_name()).lower()
            if name in VOLATILE:
                return True
    return False


def sources_of(select: exp.Select) -> set[str]:
    """Names a column of this scope may be qualified with (table names and aliases in FROM and JOINs)."""
    names: set[str] = set()
    parts = [select.args.get("from_")] + list(select.args.get("joins") or [])
    for part in parts:
        if part is None:
            continue
        src = part.this
        alias = src.alias_or_name if hasattr(src, "alias_or_name") else ""
        if alias:
            names.add(alias.lower())
        if isinstance(src, exp.Table) and src.name:
            names.add(src.name.lower())
    return names


def references_outside(node: exp.Expression, sources: set[str]) -> bool:
    """A qualified column whose qualifier is neither a source of this scope nor of a subquery nested inside
    ``node`` (a correlated reference to an outer query)."""
    for col in node.find_all(exp.Column):
        table = col.table.lower() if col.table else ""
        if not table or table in sources:
            continue
        anc, resolved = col, False
        while anc is not None and anc is not node:
            if isinstance(anc, exp.Select) and table in sources_of(anc):
                resolved = True
                break
            anc = anc.parent
        if not resolved:
            return True
    return False


def is_cheap(pred: exp.Expression, names: Iterable[str], sources: set[str]) -> bool:
    """A conjunct that can run before the LLM: no LLM call, no volatile function, not correlated."""
    return not contains_llm_call(pred, names) and not is_volatile(pred) and not references_outside(pred, sources)


def order_llm_predicates(preds: list[exp.Expression], cost: Callable[[exp.Expression], float]) -> list[exp.Expression]:
    """Cheaper LLM predicates first (stable for ties, so the written order decides)."""
    return [p for _, _, p in sorted((cost(p), i, p) for i, p in enumerate(preds))]

"""LLM predicates in join conditions: ``FROM a JOIN b ON llm_filter('...', a.review, b.flavour)``.

An inner join's ON conjunct filters the joined rows exactly as a WHERE conjunct would, so the LLM conjuncts of
inner joins move to WHERE, where the other rules lift them: the stage asks each distinct (a value, b value)
pair once, after the cheap conditions (the join's own equality keys included), instead of the UDF being called
on every pair of the nested loop. It is done only when every join of the scope is inner, cross or a comma:
a later RIGHT or FULL join would keep rows that the moved condition must still drop, an ASOF join picks each row's
nearest match among those its whole ON accepts, and a POSITIONAL join pairs rows by their position after the
earlier joins.
"""
from __future__ import annotations

from typing import Iterable

from sqlglot import exp

from optimizer.rules.calls import contains_llm_call
from optimizer.rules.predicates import conjoin, split_conjuncts


def _inner(join: exp.Join) -> bool:
    return (not join.side and (join.kind or "").upper() in ("", "INNER", "CROSS") and not join.args.get("using")
            and (join.method or "").upper() in ("", "NATURAL"))


def hoist_join_predicates(select: exp.Select, names: Iterable[str]) -> list[exp.Expression]:
    """Move the LLM conjuncts of the scope's inner joins' ON clauses into its WHERE; returns the moved ones."""
    joins = select.args.get("joins") or []
    if not joins or not all(_inner(j) for j in joins):
        return []
    moved: list[exp.Expression] = []
    for join in joins:
        on = join.args.get("on")
        if on is None or not contains_llm_call(on, names):
            continue
        terms = split_conjuncts(on)
        llm = [t for t in terms if contains_llm_call(t, names)]
        rest = [t for t in terms if t not in llm]
        join.set("on", conjoin(rest) if rest else exp.true())
        moved += llm
    if moved:
        where = select.args.get("where")
        select.set("where", exp.Where(this=conjoin(split_conjuncts(where) + moved)))
    return moved


def join_sides(fields: tuple[exp.Expression, ...]) -> tuple[str, ...] | None:
    """The table (alias) each field of a join condition reads, when each reads exactly one and they differ
    (``a.review``, ``b.flavour``): what a multi-label join needs to know which side to list. Else None."""
    sides = []
    for f in fields:
        tables = {c.table for c in f.find_all(exp.Column)}
        if len(tables) != 1 or "" in tables:
            return None
        sides.append(tables.pop())
    return tuple(sides) if len(set(sides)) == len(sides) == 2 else None

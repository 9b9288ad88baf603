"""Recognise LLM calls and read their literal parts (instruction, labels, options) and field arguments."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from sqlglot import exp


class Unliftable(Exception):
    """A call the rewriter leaves to the fallback UDF; the message is the reason."""


@dataclass(frozen=True)
class CallSpec:
    function: str
    instruction: str | None
    labels: tuple[str, ...] | None
    options: tuple[tuple[str, Any], ...]
    fields: tuple[exp.Expression, ...]  # the field argument expressions, in SQL order


def is_llm_call(node: exp.Expression, names: Iterable[str]) -> bool:
    return isinstance(node, exp.Anonymous) and str(node.name).lower() in names


def llm_calls(node: exp.Expression, names: Iterable[str]) -> list[exp.Expression]:
    """Every LLM call under ``node`` (itself included), innermost first (post-order)."""
    names = set(names)
    return [n for n in node.walk(bfs=False) if is_llm_call(n, names)][::-1]


def contains_llm_call(node: exp.Expression | None, names: Iterable[str]) -> bool:
    return node is not None and bool(llm_calls(node, names))


def call_key(call: exp.Expression) -> str:
    """Identical calls (same function, same arguments as written) share one key and one stage."""
    return call.sql(dialect="duckdb", normalize=True).lower()


def literal_value(node: exp.Expression) -> Any:
    if isinstance(node, exp.Literal):
        if node.is_string:
            return node.this
        text = node.this
        return float(text) if any(c in text for c in ".eE") else int(text)
    if isinstance(node, exp.Boolean):
        return bool(node.this)
    if isinstance(node, exp.Null):
        return None
    if isinstance(node, exp.Neg):
        value = literal_value(node.this)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value
    if isinstance(node, exp.Paren):
        return literal_value(node.this)
    if isinstance(node, exp.Array):  # a list option: model => ['small', 'large']
        return tuple(literal_value(e) for e in node.expressions)
    raise Unliftable(f"not a literal: {node.sql(dialect='duckdb')}")


def _options(node: exp.Expression) -> tuple[tuple[str, Any], ...]:
    pairs = []
    for item in node.expressions:
        if isinstance(item, (exp.PropertyEQ, exp.EQ, exp.Slice)) and item.this is not None:
            key = item.this.name if isinstance(item.this, (exp.Identifier, exp.Column)) else literal_value(item.this)
            pairs.append((str(key), literal_value(item.expression)))
        elif isinstance(item, exp.Alias):
            pairs.append((item.alias, literal_value(item.this)))
        else:
            raise Unliftable(f"options must be a struct literal: {node.sql(dialect='duckdb')}")
    return tuple(sorted(pairs))


def parse_call(call: exp.Expression) -> CallSpec:
    """Split a call into its literal parts and its field expressions; raise ``Unliftable`` when a part that must
    be a literal (instruction, labels, options) is computed per row."""
    function = str(call.name).lower()
    args = list(call.expressions)
    options: tuple[tuple[str, Any], ...] = ()
    if args and isinstance(args[-1], exp.Struct):
        options = _options(args.pop())
    instruction = labels = None
    if function == "llm_classify":
        if len(args) < 2:
            raise Unliftable("llm_classify needs a field and a list of labels")
        lab = args.pop()
        if isinstance(lab, exp.Array):
            labels = tuple(str(literal_value(e)) for e in lab.expressions)
        elif isinstance(lab, exp.Literal) and lab.is_string:
            labels = tuple(s.strip() for s in lab.this.split(",") if s.strip())
        else:
            raise Unliftable("llm_classify labels must be a literal list")
    else:
        if not args:
            raise Unliftable(f"{function} needs an instruction")
        first = args.pop(0)
        if not (isinstance(first, exp.Literal) and first.is_string):
            raise Unliftable(f"{function}: the instruction is not a string literal")
        instruction = first.this
    if not args:
        raise Unliftable(f"{function} has no field argument")
    return CallSpec(function, instruction, labels, options, tuple(args))

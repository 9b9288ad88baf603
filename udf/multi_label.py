"""The multi-label join: one call per value of the larger side picks all matching values of the small side at once.

``FROM reviews r JOIN genres g ON llm_filter('Does the review suggest the genre?', r.review, g.genre,
{'multi_label': true})`` asks, for each distinct review, one question listing the genres ("choose every genre
that applies"), decoded under a JSON schema whose items are exactly the genre values, instead of one yes/no per
(review, genre) pair: n calls instead of n x m (Snowflake's AISQL does the same). A pair's value is whether
its small-side value is among the ones chosen for its large-side value; a NULL on either side gives NULL.

It changes the prompts, and so possibly the answers, so it is opt-in (``multi_label``), like field reordering.
It applies to an ``llm_filter`` join condition over two tables whose smaller side has at most
``MAX_VALUES`` distinct values; otherwise the pairs are asked one by one, and the statistics say why.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from udf.api import EvalOutput, EvalSettings, LLMCall, ResultCache
from udf.options import validate_options
from udf.prompts import is_null, render_value

MAX_VALUES = 32  # the small side's values a prompt may list (more would crowd the context and the grammar)


def answer_pairs(call: LLMCall, pairs: list[tuple], route: Any, *, settings: EvalSettings,
                 result_cache: ResultCache | None = None) -> EvalOutput:
    """Values for ``pairs`` (one tuple per pair, the call's two fields in order) of a multi-label join."""
    from udf.routing import answer

    if call.function != "llm_filter" or len(call.field_names) != 2:
        raise ValueError("multi_label applies to an llm_filter join condition over two fields, one per table")
    plain = dataclasses.replace(call, options=tuple((k, v) for k, v in call.options if k != "multi_label"))
    columns = list(zip(*pairs)) if pairs else [(), ()]
    distinct = [sorted({v for v in col if not is_null(v)}, key=repr) for col in columns]
    small = 0 if len(distinct[0]) < len(distinct[1]) else 1
    large = 1 - small
    if len(distinct[small]) > MAX_VALUES or not distinct[small]:
        out = answer(plain, pairs, route, settings=settings, result_cache=result_cache)
        out.stats.routing = {"kind": "pairwise join", "multi_label": f"not applied: the smaller side has "
                             f"{len(distinct[small])} distinct values (at most {MAX_VALUES} are listed)"}
        return out
    labels = [v if isinstance(v, str) else render_value(v) for v in distinct[small]]  # as the model should write it
    label_of = dict(zip(distinct[small], labels))
    picker = picking_call(plain, small, labels)
    keys = sorted({p[large] for p in pairs}, key=repr)
    out = answer(picker, [(k,) for k in keys], route, settings=settings, result_cache=result_cache)
    chosen = {k: (v, e) for k, v, e in zip(keys, out.values, out.errors)}
    values, errors = [], []
    for p in pairs:
        picked, error = chosen[p[large]]
        if is_null(p[small]) or picked is None:
            values.append(None)
            errors.append(error)
        else:
            values.append(label_of[p[small]] in (picked.get("matches") or []))
            errors.append(None)
    stats = dataclasses.replace(out.stats, rows_in=len(pairs), errors=sum(e is not None for e in errors))
    stats.routing = {"kind": "multi-label join", "calls": out.stats.llm_calls + out.stats.cache_hits,
                     "pairs": len(pairs),
                     "listed": call.field_names[small], "values": len(labels)}
    return EvalOutput(values=values, errors=errors, stats=stats)


def picking_call(call: LLMCall, small: int, labels: list[str]) -> LLMCall:
    """``llm_extract`` over the larger side's field: the instruction, the values to choose from, and a schema
    whose ``matches`` may only hold those values."""
    schema = {"type": "object", "required": ["matches"],
              "properties": {"matches": {"type": "array", "items": {"enum": labels}, "maxItems": len(labels)}}}
    name = call.field_names[small]
    instruction = (f"{call.instruction}\nFor the {call.field_names[1 - small]} below, list every {name} that "
                   f"applies, choosing from: {json.dumps(labels, ensure_ascii=False)}.")
    options = {**dict(call.options), "schema": json.dumps(schema, ensure_ascii=False)}
    return LLMCall(function="llm_extract", instruction=instruction, labels=None,
                   field_names=(call.field_names[1 - small],), options=validate_options(options))

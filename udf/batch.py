"""The batch path: rows of one LLM call in, one value per row out.

``evaluate(call, rows, backend, settings=..., result_cache=..., model_id=...)``:

1. a row whose fields are all NULL answers NULL without a call (a call without fields is asked as is) (``StageStats.null_inputs``);
2. the other rows are rendered (``udf.prompts``); with ``settings.dedup`` identical rendered tuples
   are asked once (without it every row is its own request, duplicates sent next to each other);
3. with ``settings.reorder`` the distinct tuples go to ``optimizer.reorder(df, method="fast")`` as a
   DataFrame of strings (columns = the field names), which orders the rows and the fields inside
   each row so that consecutive prompts share long prefixes (without it: first-occurrence order,
   fields as written). The plan is made over the distinct tuples whether or not dedup is on, so a
   row's prompt never depends on the dedup switch;
4. prompts already in the result cache (key: ``model_id`` + sampling parameters + the full prompt;
   an empty ``model_id`` is replaced by ``backend_model_id(backend)``) are answered from it; the
   misses go to ``backend.generate`` as ONE ordered list, in the plan's order, which is what lets
   the engine's prefix cache serve them (sampling without a ``seed`` bypasses the result cache);
5. outputs are parsed per function (``udf.functions``); a failed request or an unparsable answer is
   NULL plus a reason in ``errors`` (or ``RuntimeError`` with ``settings.on_error == "raise"``); only
   successes are written to the result cache;
6. values come back in input order.

Same values whatever the switches (greedy decoding): dedup and the result cache only skip
repeated work, and the order in which prompts are sent changes no prompt and no answer. The one
thing that would change prompt TEXT is field reordering (each row's fields written in the order the
optimiser chose for it), which can change a model's answer; it is therefore opt-in, with the option
``reorder_fields=true`` (per call or as a session default). By default prompts keep the written field
order and only rows are reordered (sorted lexicographically by their field values, the best row order
for a fixed field order), so values equal the plain per-row evaluation.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from typing import Any, Sequence

from engine_backend.backends.base import Backend, GenerationRequest
from udf.api import EvalOutput, EvalSettings, LLMCall, ResultCache, StageStats
from udf.confidence import confidence as confidence_of
from udf.functions import choice_map, params_key, parse_output, sampling_params, validate_call
from udf.options import DEFAULT_MAX_FIELD_CHARS, DEFAULT_REORDER_FIELDS, merge_options
from udf.prompts import build_prompt, is_null, prompt_head, render_value

ON_ERROR = ("null", "raise")


def _cache_key(model_id: str, params: dict[str, Any], prompt: str) -> str:
    # Same recipe as llm_sql.cache.cache_key (udf may not import llm_sql): sha256 over canonical JSON.
    blob = json.dumps({"model": model_id, "params": params, "prompt": prompt}, sort_keys=True,
                      ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def backend_model_id(backend: Backend) -> str:
    """A model identity for result-cache keys when the caller gives none: backend kind + model location."""
    engine = getattr(backend, "engine", None)
    parts = [str(getattr(backend, "name", type(backend).__name__))]
    for obj, attr in ((engine, "model_path"), (backend, "base_url"), (backend, "model")):
        value = getattr(obj, attr, None) if obj is not None else None
        if isinstance(value, str) and value:
            parts.append(value)
    return ":".join(parts)


def _unique_names(names: Sequence[str]) -> list[str]:
    """DataFrame column names: the field names, made unique (``a``, ``a#2``) if a name repeats."""
    seen: Counter[str] = Counter()
    out = []
    for n in names:
        seen[n] += 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def plan_order(call: LLMCall, distinct: list[tuple[str, ...]], reorder: bool,
               reorder_fields: bool = DEFAULT_REORDER_FIELDS) -> tuple[list[int], list[tuple[int, ...]], float]:
    """(row order over ``distinct``, field index order per output row, solve seconds)."""
    n_fields = len(call.field_names)
    identity = tuple(range(n_fields))
    if not reorder or len(distinct) == 0 or n_fields == 0:
        return list(range(len(distinct))), [identity] * len(distinct), 0.0
    if not reorder_fields:
        start = time.perf_counter()
        order = sorted(range(len(distinct)), key=distinct.__getitem__)
        return order, [identity] * len(distinct), time.perf_counter() - start
    import pandas as pd
    from optimizer import reorder as optimizer_reorder

    columns = _unique_names(call.field_names)
    df = pd.DataFrame(distinct, columns=columns, dtype=object)
    start = time.perf_counter()
    plan = optimizer_reorder(df, method="fast")
    elapsed = time.perf_counter() - start
    order = [int(i) for i in plan.order]
    if sorted(order) != list(range(len(distinct))):
        raise RuntimeError(f"optimizer.reorder returned an order that is not a permutation of {len(distinct)} rows")
    if len(plan.fields) != len(order):
        raise RuntimeError("optimizer.reorder returned plan.fields not aligned with plan.order")
    pos = {c: i for i, c in enumerate(columns)}
    fields: list[tuple[int, ...]] = []
    for f in plan.fields:
        idx = tuple(pos[c] for c in f)
        if sorted(idx) != list(identity):
            raise RuntimeError(f"optimizer.reorder returned a field order {tuple(f)!r} that is not a permutation "
                               f"of {tuple(columns)!r}")
        fields.append(idx)
    seconds = float(getattr(plan, "solve_seconds", elapsed) or elapsed)
    return order, fields, seconds


def evaluate(call: LLMCall, rows: list[tuple], backend: Backend, *, settings: EvalSettings,
             result_cache: ResultCache | None = None, model_id: str = "", confidence: bool = False) -> EvalOutput:
    """Answer ``call`` for every row of ``rows`` (tuples aligned with ``call.field_names``); see module doc.
    ``confidence``: also say how sure the model was of each answer (``EvalOutput.confidence``, ``udf.confidence``)."""
    validate_call(call)
    if settings.on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {settings.on_error!r}")
    opts = merge_options(settings.defaults, call.options)
    params = sampling_params(call, opts, confidence)
    check = getattr(backend, "check", None)  # a duck-typed backend may not have it
    if check is not None:
        check(params)
    pkey = params_key(params)
    # An answer that carries more than its text (confidence, reasoning) is cached as a JSON record, under its own key.
    with_reasoning = bool(opts.get("return_reasoning"))
    record = confidence or with_reasoning
    if record:
        pkey["record"] = 1
    max_chars = int(opts.get("max_field_chars", DEFAULT_MAX_FIELD_CHARS))
    head = prompt_head(call.function, call.instruction, call.labels, opts.get("system"))

    n_fields = len(call.field_names)
    stats = StageStats(rows_in=len(rows))
    values: list[Any] = [None] * len(rows)
    errors: list[str | None] = [None] * len(rows)

    # 1-2. NULL rows, rendering; the distinct rendered tuples are what the optimiser plans over,
    # with or without dedup, so that the field order chosen for a row never depends on the switch.
    group_of: list[int | None] = [None] * len(rows)
    distinct: list[tuple[str, ...]] = []
    index: dict[tuple[str, ...], int] = {}
    for r, row in enumerate(rows):
        row = tuple(row)
        if len(row) != n_fields:
            raise ValueError(f"{call.function}: row {r} has {len(row)} values but the call has {n_fields} fields "
                             f"{call.field_names!r}")
        if row and all(is_null(v) for v in row):  # no field at all: the instruction alone is the prompt
            stats.null_inputs += 1
            continue
        rendered = tuple(render_value(v, max_chars) for v in row)
        g = index.get(rendered)
        if g is None:
            g = index[rendered] = len(distinct)
            distinct.append(rendered)
        group_of[r] = g
    stats.distinct_inputs = len(distinct)

    # 3. order rows and fields
    order, field_orders, stats.solve_seconds = plan_order(call, distinct, settings.reorder,
                                                            bool(opts.get("reorder_fields", DEFAULT_REORDER_FIELDS)))
    if field_orders:
        common = Counter(field_orders).most_common(1)[0][0]
        stats.field_order = tuple(call.field_names[i] for i in common)
    prompts: list[str] = [""] * len(distinct)
    for g, fo in zip(order, field_orders):
        prompts[g] = build_prompt(head, call.function, [call.field_names[i] for i in fo],
                                  [distinct[g][i] for i in fo])

    # Units of work, in plan order: one per distinct tuple with dedup, else one per row (duplicates adjacent).
    members: list[list[int]] = [[] for _ in distinct]
    for r, g in enumerate(group_of):
        if g is not None:
            members[g].append(r)
    units: list[tuple[int, list[int]]] = []  # (group, rows)
    for g in order:
        if settings.dedup:
            units.append((g, members[g]))
        else:
            units.extend((g, [r]) for r in members[g])

    # 4. result cache
    # A sampled answer without a seed is not a function of its prompt: never read or write it.
    reproducible = params.greedy or params.seed is not None
    use_cache = bool(settings.result_cache) and result_cache is not None and reproducible
    if use_cache and not model_id:
        model_id = backend_model_id(backend)
    keys = [_cache_key(model_id, pkey, p) for p in prompts] if use_cache else []
    cached: dict[str, str] = result_cache.get_many(list(dict.fromkeys(keys))) if use_cache and keys else {}
    n_units = len(units)
    raw: list[str | None] = [None] * n_units
    unit_err: list[str | None] = [None] * n_units
    unit_conf: list[float | None] = [None] * n_units
    unit_reasoning: list[str | None] = [None] * n_units
    answered = [use_cache and keys[g] in cached for g, _ in units]
    for u, (g, _) in enumerate(units):
        if answered[u]:
            raw[u] = cached[keys[g]]
            if record:
                raw[u], unit_conf[u], unit_reasoning[u] = _unpack(raw[u])
    stats.cache_hits = sum(answered)
    choices = choice_map(call) if confidence else None  # what confidence reads

    # 5. one ordered batch of misses
    send = [u for u in range(n_units) if not answered[u]]
    if send:
        start = time.perf_counter()
        results = backend.generate([GenerationRequest(prompt=prompts[units[u][0]], params=params) for u in send],
                                   progress=settings.progress)
        stats.llm_seconds = time.perf_counter() - start
        if len(results) != len(send):
            raise RuntimeError(f"backend {getattr(backend, 'name', backend)!r} returned {len(results)} results for "
                               f"{len(send)} requests")
        stats.llm_calls = len(send)
        for u, res in zip(send, results):
            stats.prompt_tokens += int(res.prompt_tokens or 0)
            stats.cached_prompt_tokens += int(res.cached_prompt_tokens or 0)
            stats.generated_tokens += int(res.completion_tokens or 0)
            stats.reasoning_tokens += int(res.reasoning_tokens or 0)
            if res.ok and res.text is not None:
                raw[u] = res.text
                unit_reasoning[u] = res.reasoning
                if confidence:
                    unit_conf[u] = confidence_of(choices, res.text, res.logprobs)
            else:
                unit_err[u] = f"backend error ({res.finish_reason}): {res.error or 'request failed'}"

    # parse; successes (never failures) go to the result cache
    to_store: dict[str, str] = {}
    conf: list[float | None] = [None] * len(rows)
    for u, (g, unit_rows) in enumerate(units):
        value, err = (None, unit_err[u]) if unit_err[u] is not None else parse_output(call, raw[u], opts)
        if err is None and use_cache and not answered[u]:
            to_store[keys[g]] = _pack(raw[u], unit_conf[u], unit_reasoning[u]) if record else raw[u]  # type: ignore
        if err is None and with_reasoning:
            value = {"answer": value, "reasoning": unit_reasoning[u]}
        # 6. back to input order
        for r in unit_rows:
            values[r], errors[r], conf[r] = value, err, unit_conf[u]
    if to_store:
        result_cache.put_many(to_store)  # type: ignore[union-attr]
    stats.errors = sum(e is not None for e in errors)
    if params.reasoning:
        stats.rows_reasoned = sum(len(unit_rows) for _, unit_rows in units)
    if settings.on_error == "raise":
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise RuntimeError(f"{call.function} failed on a row: {first}")
    return EvalOutput(values=values, errors=errors, stats=stats, confidence=conf if confidence else None)


def _pack(text: str | None, confidence: float | None, reasoning: str | None) -> str:
    return json.dumps({"text": text, "confidence": confidence, "reasoning": reasoning}, ensure_ascii=False)


def _unpack(blob: str) -> tuple[str | None, float | None, str | None]:
    d = json.loads(blob)
    return d.get("text"), d.get("confidence"), d.get("reasoning")

"""``llm_agg(instruction, field [, options])``: an LLM aggregate that folds a group's values into one answer.

    SELECT style, llm_agg('Summarise the reviews', review) FROM beers GROUP BY style          -- DuckDB, Spark SQL
    SELECT style, llm_agg('Summarise the reviews', review, {'max_tokens': 64}) ...            -- options last
    df.llm.agg('Summarise the reviews', 'review', by='style')                                 -- pandas

How each mode gets there (one source of truth: ``udf.registry.AGGREGATES``): the aggregate is rewritten to the
scalar function ``llm_agg_list(instruction, <the group's values as a list> [, options])``, which answers every
group of a batch together (``answer_list_batch``). DuckDB mode rewrites the SQL (``rewrite_duckdb``: ``list(field)``
with GROUP BY); Spark's ``llm_agg`` is a grouped-aggregate Arrow UDF (one group per call) that the Catalyst
extension's ``ResolveLLMAggregates`` turns into ``llm_agg_list(instruction, collect_list(field))`` so that all the
groups of an Arrow batch are answered together (with ``llm_sql.optimize=false``, or without the extension, each
group is answered alone: the same values, more batches). ``llm_agg_list`` may also be called directly.

**Values.** NULLs are skipped; a group with no value left (all NULL, or no row) is NULL without a call. Each value
is rendered as a field value is in prompts (``udf.prompts``: text as a JSON string, cut at ``max_field_chars``)
and the group's values are **sorted by that text** (code-point order), duplicates kept: the answer never depends
on the order in which the engine hands rows over (DuckDB's ``list``, Spark's ``collect_list`` and partitions).

**Prompts.** A group's values are one field, a JSON list, of an ``llm`` prompt, so they are answered by
``udf.batch.evaluate`` like any call (dedup, reordering, the result cache, per-request errors)::

    Task: {instruction}

    Input:
    "values": ["first value", "second value", ...]

    Answer:

**Hierarchy.** When the list does not fit one prompt, the sorted values are packed greedily, in order, into
chunks that each fit (level 0); each chunk's answer is a partial answer, and the partial answers, in chunk order,
are packed again into chunks of ``"partial answers": [...]`` under the instruction plus a note to combine them
(level 1), and so on until one chunk is left: its answer is the group's value. A group that fits one prompt is
answered in one call. Every request of one level, for every group of the batch, goes to the backend as one
ordered batch (one ``evaluate``): the instruction is every prompt's shared prefix.

**Budget** (``budget_of``). A chunk's prompt, everything included, must fit:

* by tokens when a tokenizer is known (the embedded engine's, or, in Spark, the node engine's checkpoint
  directory): at most ``max_model_len - max_tokens`` tokens (also less ``max_reasoning_tokens`` + 32 with
  ``reasoning => 'on'``), or ``chunk_tokens`` if that is smaller; counted with the model's tokenizer on the whole
  prompt, as the engine will;
* else by characters: ``chunk_chars`` (default 8,000, about 2,000 tokens; ``chunk_tokens`` x 4 if only that is
  given). ``chunk_chars`` also forces characters where a tokenizer is known (the same chunks on every backend).

A value too long for a chunk by itself is cut (``udf.prompts``' marker `` ...[truncated N chars]``) to the room a
prompt leaves; a partial answer to half that room, so that any two fit and each level at least halves the count.
``max_tokens`` defaults to 128 (a summary is longer than a label).

**Errors.** A group whose request fails at any level (the backend's reason), or that cannot be folded (a context
too small for the instruction and an answer), is NULL with the reason recorded (``last_stats(...).error_reasons``),
or raises with ``on_error='raise'``; the other groups are answered. Options are the other functions'
(``udf.options``) except ``reasoning => 'auto'``, model cascades and ``return_reasoning`` (per-row ideas).

**Statistics.** ``StageStats`` sums every level: ``rows_in`` and ``null_inputs`` count groups, ``distinct_inputs``
and ``llm_calls`` the distinct chunk prompts and requests sent, ``errors`` the failed groups.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import pyarrow as pa

from udf.api import EvalOutput, EvalSettings, LLMCall, ResultCache, StageStats
from udf.arrow_calls import answer_retrying, is_list
from udf.options import DEFAULT_MAX_FIELD_CHARS, DEFAULT_MAX_REASONING_TOKENS, merge_options, validate_options
from udf.presets import expand
from udf.prompts import _render, _truncate, build_prompt, is_null, prompt_head
from udf.registry import AGGREGATES

FUNCTION = "llm_agg"
LIST_FUNCTION = AGGREGATES[FUNCTION].list_function
DEFAULT_AGG_MAX_TOKENS = 128
DEFAULT_CHUNK_CHARS = 8000
CHARS_PER_TOKEN = 4  # chunk_tokens without a tokenizer
VALUES_FIELD = "values"
PARTS_FIELD = "partial answers"
COMBINE_NOTE = ("\nThe input holds answers to this task, each for one part of the values, in order. "
                "Combine them into one answer for all the values.")
MAX_LEVELS = 64  # each level at least halves the count, so this is never reached by a real group
NO_CUT = 10**12  # max_field_chars of the inner calls: the lists are sized here, never cut by udf.batch
AGG_ONLY_OPTIONS = ("chunk_tokens", "chunk_chars")
_SEPARATOR = ", "


# -- the budget -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    """How a chunk's prompt is measured and how much it may take."""

    unit: str  # "tokens" | "characters"
    limit: int  # the most units one whole prompt may take
    count: Callable[[str], int]  # units of a whole prompt
    count_piece: Callable[[str], int]  # units of a piece of one (no special tokens)


@lru_cache(maxsize=8)
def _dir_tokenizer(model_dir: str):
    from engine_backend.config import ModelConfig  # no torch: a Spark worker only talks to the node's server
    from engine_backend.tokenizer import Tokenizer

    return Tokenizer.from_dir(model_dir), int(ModelConfig.from_dir(model_dir).max_position_embeddings)


def tokenizer_of(target: Any) -> tuple[Any, int | None]:
    """(tokenizer, context length) of a ``udf.arrow_calls.Target``: the embedded engine's own, or the checkpoint
    directory a served backend runs (``Target.model_dir``, set by Spark for the node engine); (None, None)."""
    engine = getattr(getattr(target, "backend", None), "engine", None)
    tok, ctx = getattr(engine, "tokenizer", None), getattr(engine, "max_model_len", None)
    if tok is not None and hasattr(tok, "encode") and isinstance(ctx, int):
        return tok, ctx
    model_dir = getattr(target, "model_dir", None)
    if model_dir:
        return _dir_tokenizer(str(model_dir))
    return None, None


def budget_of(target: Any, opts: dict[str, Any], max_tokens: int) -> Budget:
    """The chunk budget for a call's merged options on ``target`` (see the module doc)."""
    chars = opts.get("chunk_chars")
    if chars is None:
        tok, ctx = tokenizer_of(target)
        if tok is not None:
            room = ctx - max_tokens
            if opts.get("reasoning") == "on":
                room -= int(opts.get("max_reasoning_tokens", DEFAULT_MAX_REASONING_TOKENS)) + 32
            limit = min(room, int(opts["chunk_tokens"])) if opts.get("chunk_tokens") else room
            return Budget("tokens", limit, lambda p: len(tok.encode(p)),
                          lambda p: len(tok.encode(p, add_special_tokens=False)))
        chars = int(opts["chunk_tokens"]) * CHARS_PER_TOKEN if opts.get("chunk_tokens") else DEFAULT_CHUNK_CHARS
    return Budget("characters", int(chars), len, len)


# -- items and chunks -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Item:
    value: Any  # what goes into the list handed to evaluate
    text: str  # its rendering in the prompt (render_value(value, None))
    full: str | None  # the uncut text of a text value (for a deeper cut), None for other values


def _item(value: Any, max_chars: int) -> _Item | None:
    if is_null(value):
        return None
    text, is_text = _render(value)
    if is_text or len(text) > max_chars:  # a non-text value too long to keep is cut as its text
        cut = _truncate(text, max_chars)
        return _Item(cut, json.dumps(cut, ensure_ascii=False), text)
    return _Item(value, text, None)


def _answer_item(answer: str) -> _Item:
    return _Item(answer, json.dumps(answer, ensure_ascii=False), answer)


def _list_text(items: list[_Item]) -> str:
    return "[" + _SEPARATOR.join(it.text for it in items) + "]"


def _prompt(head: str, name: str, items: list[_Item]) -> str:
    """Exactly what ``udf.batch.evaluate`` builds for the row ``([item values],)`` of ``llm(.., name)``."""
    return build_prompt(head, "llm", [name], [_list_text(items)])


def _fit(it: _Item, room: int, budget: Budget) -> _Item:
    """``it``, or its text cut (with the truncation marker) so that it takes at most ``room`` units."""
    if budget.count_piece(it.text + _SEPARATOR) <= room:
        return it
    full = it.full if it.full is not None else it.text
    lo, hi = 0, len(full) - 1  # the longest prefix that fits: count grows with the prefix
    best = _truncate(full, 0)
    while lo <= hi:
        mid = (lo + hi) // 2
        cut = _truncate(full, mid)
        if budget.count_piece(json.dumps(cut, ensure_ascii=False) + _SEPARATOR) <= room:
            best, lo = cut, mid + 1
        else:
            hi = mid - 1
    return _Item(best, json.dumps(best, ensure_ascii=False), full)


def chunks_of(items: list[_Item], head: str, name: str, budget: Budget, combine: bool) -> list[list[_Item]] | str:
    """The items packed greedily, in order, into chunks whose prompts fit the budget; or why they cannot be."""
    fixed = budget.count(_prompt(head, name, []))
    room = budget.limit - fixed
    if room < 8 or (combine and room < 16):
        raise_what = "chunk_chars" if budget.unit == "characters" else "the model's context"
        return (f"{FUNCTION}: the prompt without any value already takes {fixed} of the {budget.limit} "
                f"{budget.unit} a prompt may use: raise {raise_what}, lower max_tokens, or shorten the instruction "
                f"or system prompt")
    cap = room // 2 if combine else room
    fitted = [_fit(it, cap, budget) for it in items]
    chunks: list[list[_Item]] = []
    cur: list[_Item] = []
    used = 0
    for it in fitted:
        cost = budget.count_piece(it.text + _SEPARATOR)
        if cur and used + cost > room:
            chunks.append(cur)
            cur, used = [], 0
        cur.append(it)
        used += cost
    if cur:
        chunks.append(cur)
    # the pieces' counts are an estimate (a tokenizer may merge across them): check each whole prompt, and move
    # the last item of one that does not fit to the front of the next chunk
    i = 0
    while i < len(chunks):
        while len(chunks[i]) > 1 and budget.count(_prompt(head, name, chunks[i])) > budget.limit:
            if i + 1 == len(chunks):
                chunks.append([])
            chunks[i + 1].insert(0, chunks[i].pop())
        i += 1
    return chunks


# -- one call over many groups --------------------------------------------------------------------------------
def check_options(opts: dict[str, Any]) -> None:
    if isinstance(opts.get("model"), tuple):
        raise ValueError(f"{FUNCTION} answers on one model: model cascades (model => [...]) are per-row functions'")
    if opts.get("reasoning") == "auto":
        raise ValueError(f"{FUNCTION} does not take reasoning 'auto' (a per-row router); use 'on' or 'off'")
    if opts.get("return_reasoning"):
        raise ValueError(f"{FUNCTION} does not take return_reasoning: its value is the answer text")


def _add(total: StageStats, s: StageStats) -> None:
    for name in ("distinct_inputs", "llm_calls", "cache_hits", "prompt_tokens", "cached_prompt_tokens",
                 "generated_tokens", "reasoning_tokens", "solve_seconds", "llm_seconds"):
        setattr(total, name, getattr(total, name) + getattr(s, name))


def aggregate(instruction: str, groups: list[list[Any] | None], route: Callable[[Any], Any], *,
              settings: EvalSettings, result_cache: ResultCache | None = None,
              options: Any = None) -> EvalOutput:
    """One answer per group (a list of values, or None): see the module doc. ``route(model)`` gives the
    ``udf.arrow_calls.Target`` of the ``model`` option (None = the session's default)."""
    from udf.batch import evaluate
    from udf.functions import make_call

    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"{FUNCTION} needs a non-empty instruction (text or a preset name)")
    call_opts = dict(validate_options(options))
    opts = merge_options(settings.defaults, call_opts)
    check_options(opts)
    max_tokens = int(opts.get("max_tokens", DEFAULT_AGG_MAX_TOKENS))
    max_chars = int(opts.get("max_field_chars", DEFAULT_MAX_FIELD_CHARS))
    target = route(opts.get("model"))
    budget = budget_of(target, opts, max_tokens)
    inner_opts = {k: v for k, v in call_opts.items() if k not in AGG_ONLY_OPTIONS}
    inner_opts.update(max_tokens=max_tokens, max_field_chars=NO_CUT)
    inner_settings = dataclasses.replace(settings, on_error="null",
                                         defaults={k: v for k, v in settings.defaults.items()
                                                   if k not in AGG_ONLY_OPTIONS})
    system = opts.get("system")
    combine_instruction = expand("llm", instruction).strip() + COMBINE_NOTE
    levels = [(prompt_head("llm", instruction, None, system), VALUES_FIELD,
               make_call("llm", instruction, [VALUES_FIELD], options=inner_opts)),
              (prompt_head("llm", combine_instruction, None, system), PARTS_FIELD,
               make_call("llm", combine_instruction, [PARTS_FIELD], options=inner_opts))]

    n = len(groups)
    stats = StageStats(rows_in=n)
    values: list[Any] = [None] * n
    errors: list[str | None] = [None] * n
    pending: dict[int, list[_Item]] = {}
    for g, vals in enumerate(groups):
        items = [it for it in (_item(v, max_chars) for v in (vals or ())) if it is not None]
        if items:
            pending[g] = sorted(items, key=lambda it: it.text)
        else:
            stats.null_inputs += 1
    level = 0
    while pending:
        head, name, call = levels[min(level, 1)]
        plan: list[tuple[int, list[list[_Item]]]] = []
        for g, items in pending.items():
            chunks = chunks_of(items, head, name, budget, combine=level > 0)
            if isinstance(chunks, str):
                errors[g] = chunks
            elif level > 0 and len(chunks) >= len(items):
                errors[g] = f"{FUNCTION}: {len(items)} partial answers do not fit together in one prompt"
            elif level >= MAX_LEVELS:
                errors[g] = f"{FUNCTION}: more than {MAX_LEVELS} levels"
            else:
                plan.append((g, chunks))
        pending = {}
        if not plan:
            break
        rows = [([it.value for it in chunk],) for _, chunks in plan for chunk in chunks]
        out = evaluate(call, rows, target.backend, settings=inner_settings, result_cache=result_cache,
                       model_id=target.model_id)
        _add(stats, out.stats)
        k = 0
        for g, chunks in plan:
            answers, errs = out.values[k: k + len(chunks)], out.errors[k: k + len(chunks)]
            k += len(chunks)
            bad = next((i for i, e in enumerate(errs) if e is not None), None)
            if bad is not None:
                errors[g] = f"{FUNCTION}: level {level}, part {bad + 1} of {len(chunks)}: {errs[bad]}"
            elif len(chunks) == 1:
                values[g] = answers[0]
            else:
                pending[g] = [_answer_item(a) for a in answers]
        level += 1
    stats.errors = sum(e is not None for e in errors)
    model = opts.get("model")
    stats.rows_by_model = {model if isinstance(model, str) else (getattr(target, "model", None) or "default"):
                           sum(v is not None or e is not None for v, e in zip(values, errors))}
    if settings.on_error == "raise":
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise RuntimeError(f"{FUNCTION} failed on a group: {first}")
    return EvalOutput(values=values, errors=errors, stats=stats)


# -- the Arrow core of llm_agg_list, shared by DuckDB, Spark and pandas ---------------------------------------
def answer_list_batch(args: tuple[Any, ...], route: Callable[[Any], Any], settings: EvalSettings, *,
                      result_cache: ResultCache | None = None,
                      on_output: Callable[[LLMCall, EvalOutput, Any], None] | None = None,
                      retry_backend_errors: bool = False) -> pa.Array:
    """``llm_agg_list(instruction, values [, options])`` over one Arrow batch: one answer per row (a group), the
    rows with the same instruction and options answered together by ``aggregate``. A NULL instruction or list is
    NULL. ``on_output(call, output, target)`` sees each call's output; ``retry_backend_errors`` as in
    ``udf.arrow_calls.answer_batch``."""
    if len(args) not in (2, 3):
        raise ValueError(f"{LIST_FUNCTION}(instruction, values [, options]) takes 2 or 3 arguments, got {len(args)}")
    if not (is_list(args[1]) or pa.types.is_null(args[1].type)):
        raise ValueError(f"{LIST_FUNCTION}'s values must be a list (a group's values: list(field) in DuckDB, "
                         f"collect_list(field) in Spark), got {args[1].type}; {FUNCTION}(instruction, field) in a "
                         f"GROUP BY query builds it")
    n = len(args[1])
    instructions = args[0].to_pylist()
    lists = args[1].to_pylist()
    options = args[2].to_pylist() if len(args) == 3 else [None] * n
    calls: dict[tuple, list[int]] = {}
    for i in range(n):
        if instructions[i] is None:
            continue
        calls.setdefault((instructions[i], validate_options(options[i])), []).append(i)
    values: list[Any] = [None] * n
    for (instruction, opts), idx in calls.items():
        groups = [lists[i] for i in idx]
        out, target = answer_retrying(
            FUNCTION, lambda routed: aggregate(instruction, groups, routed, settings=settings,
                                               result_cache=result_cache, options=opts),
            route, retry_backend_errors)
        for i, v in zip(idx, out.values):
            values[i] = v
        if on_output is not None:
            call = LLMCall(function=FUNCTION, instruction=instruction, labels=None, field_names=(VALUES_FIELD,),
                           options=opts)
            on_output(call, out, target)
    return pa.array(values, type=AGGREGATES[FUNCTION].arrow_type)


# -- DuckDB ---------------------------------------------------------------------------------------------------
def rewrite_duckdb(sql: str) -> str:
    """``llm_agg(instruction, field [, options])`` -> ``llm_agg_list(instruction, list(field) [, options])``, for
    every call in ``sql`` (an aggregate's ``FILTER (WHERE ...)`` moves into ``list``); ``sql`` itself when it has
    none. A call with another number of arguments, or as a window function, is a ValueError."""
    if FUNCTION not in sql.lower():
        return sql
    import sqlglot
    from sqlglot import exp

    try:
        tree = sqlglot.parse_one(sql, dialect="duckdb")
    except sqlglot.errors.SqlglotError:
        return sql  # DuckDB reports the syntax error
    calls = [n for n in tree.find_all(exp.Anonymous) if n.name.lower() == FUNCTION]
    if not calls:
        return sql
    for node in calls:
        args = list(node.expressions)
        if len(args) not in (2, 3):
            raise ValueError(f"{FUNCTION}(instruction, field [, options]) takes 2 or 3 arguments, got {len(args)}: "
                             f"{node.sql(dialect='duckdb')} (name several fields with a struct: "
                             f"{{'review': review, 'stars': stars}})")
        values: exp.Expression = exp.Anonymous(this="list", expressions=[args[1]])
        replaced: exp.Expression = node
        parent = node.parent
        if isinstance(parent, exp.Filter) and parent.this is node:
            values = exp.Filter(this=values, expression=parent.expression)
            replaced = parent
            parent = parent.parent
        if isinstance(parent, exp.Window):
            raise ValueError(f"{FUNCTION} is an aggregate over GROUP BY groups; it is not available as a window "
                             f"function: {parent.sql(dialect='duckdb')}")
        replaced.replace(exp.Anonymous(this=LIST_FUNCTION, expressions=[args[0], values, *args[2:]]))
    return tree.sql(dialect="duckdb")


def register_duckdb(con: Any, route: Callable[[Any], Any], settings: EvalSettings,
                    result_cache: ResultCache | None = None, on_output=None) -> None:
    """Register ``llm_agg_list`` (VARCHAR) on DuckDB connection ``con`` as a vectorised UDF."""
    spec = AGGREGATES[FUNCTION]

    def udf(*args: Any):  # *args only: DuckDB reads VARARGS of ANY from the signature
        return answer_list_batch(tuple(args), route, settings, result_cache=result_cache, on_output=on_output)

    udf.__name__ = spec.list_function
    try:
        con.remove_function(spec.list_function)
    except Exception:
        pass
    con.create_function(spec.list_function, udf, None, spec.duckdb_type, type="arrow", null_handling="special")

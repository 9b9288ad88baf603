"""Function options: the trailing struct of an LLM call and the session defaults.

In SQL, options are a trailing struct, ``llm('summarize', review, {'max_tokens': 64})``;
in Python they are ``EvalSettings.defaults`` (``llm_sql.register(con, max_tokens=64)``). A
call's own options win over the session's. Unknown names and wrong types raise a
``ValueError`` that names the option and lists the allowed ones.

| option | type | default | meaning |
|---|---|---|---|
| ``max_tokens`` | int >= 1 | 32 | longest ``llm`` answer in tokens (the constrained functions size it themselves) |
| ``temperature`` | float in [0, 100] | 0.0 | 0 = greedy, repeatable answers (the default); > 0 samples |
| ``top_p`` | float in (0, 1] | 1.0 | nucleus sampling (with temperature > 0) |
| ``top_k`` | int >= 0 | 0 | top-k sampling, 0 = off |
| ``seed`` | int | none | seed for sampling |
| ``model`` | str or list of str | session model | which model answers (the session maps it to a backend); a list is a cascade, first model first (``udf.routing``) |
| ``system`` | str | see ``udf.prompts`` | the system prompt at the head of every prompt |
| ``max_field_chars`` | int >= 16 | 4000 | field values longer than this are truncated (see ``udf.prompts``) |
| ``schema`` | str | none | ``llm_extract``'s output: a field list (``'brewery VARCHAR, abv DOUBLE, styles VARCHAR[]'``) or a JSON schema; see ``udf.extract`` |
| ``reasoning`` | ``'off'`` / ``'on'`` / ``'auto'`` | ``'off'`` | ``'on'``: a reasoning model thinks before answering (its chat template's switch); ``'auto'``: answer without, then re-ask with reasoning only the rows whose confidence is under ``reasoning_threshold`` (``udf.routing``) |
| ``max_reasoning_tokens`` | int >= 0 | 256 | the thinking budget: the engine closes the block when it is spent |
| ``return_reasoning`` | bool | false | the value becomes STRUCT(answer, reasoning) |
| ``reasoning_classifier`` | str | none | ``'auto'``: a local Hugging Face sequence-classification directory that decides from each row's prompt whether it needs reasoning (its class named like "reasoning", else class 1), instead of the confidence of a first answer |
| ``reasoning_threshold`` | float in [0, 1] | 0.9 | ``'auto'``: rows answered with a confidence below it are re-asked with reasoning |
| ``cascade_threshold`` | float in [0, 1] | 0.9 | ``model => ['small', 'large']``: rows a model answers with a confidence below it go to the next model |
| ``target_precision`` / ``target_recall`` | float in (0, 1) | none | calibrate the cascade's threshold on a sample answered by both models so the first model's accepted answers agree with the last's at this rate (recall: of the last model's ``true`` rows, for ``llm_filter``), with probability ``1 - failure_probability`` |
| ``calibration_sample`` | int >= 10 | 200 | rows in that sample |
| ``calibration_seed`` | int | 0 | which rows |
| ``failure_probability`` | float in (0, 1) | 0.1 | the chance the calibrated guarantee fails |
| ``chunk_tokens`` | int >= 32 | the context | ``llm_agg``: most tokens one prompt may take (prompt, not answer), under what the model's context leaves after ``max_tokens``; with a tokenizer only (``udf.agg``) |
| ``chunk_chars`` | int >= 64 | 8000 without a tokenizer | ``llm_agg``: chunk by characters, at most this many per prompt, even where a tokenizer is known (``udf.agg``) |
| ``multi_label`` | bool | false | an ``llm_filter`` inner-join condition over two tables: one call per value of the larger side lists the matching values of the smaller side (at most 32) instead of one call per pair (``udf.multi_label``); it changes the prompts, so it is opt-in; the plain evaluation asks pairs |
| ``reorder_fields`` | bool | false | let the optimiser also reorder the fields inside each prompt (GGR's per-row field order: higher prefix hit rates, but the prompt's wording changes, so a model may answer differently); false keeps the written field order and reorders rows only, so results equal the plain evaluation |
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

DEFAULT_MAX_TOKENS = 32
DEFAULT_MAX_FIELD_CHARS = 4000
# Optimisations must never change results: reordering the fields of a prompt rewords it, so it is opt-in.
DEFAULT_REORDER_FIELDS = False
REASONING_MODES = ("off", "on", "auto")
DEFAULT_MAX_REASONING_TOKENS = 256

# name -> (accepted python types, description of the rule, check)
_SPECS: dict[str, tuple[tuple[type, ...], str, Any]] = {
    "max_tokens": ((int,), "a positive integer", lambda v: v >= 1),
    "temperature": ((int, float), "a number in [0, 100]", lambda v: 0.0 <= v <= 100.0),
    "top_p": ((int, float), "a number in (0, 1]", lambda v: 0.0 < v <= 1.0),
    "top_k": ((int,), "a non-negative integer", lambda v: v >= 0),
    "seed": ((int,), "an integer", lambda v: True),
    "model": ((str,), "a model name or a list of model names", lambda v: v.strip() != ""),
    "system": ((str,), "a string", lambda v: True),
    "max_field_chars": ((int,), "an integer >= 16", lambda v: v >= 16),
    "reorder_fields": ((bool,), "a boolean", lambda v: True),
    "multi_label": ((bool,), "a boolean", lambda v: True),
    "chunk_tokens": ((int,), "an integer >= 32", lambda v: v >= 32),
    "chunk_chars": ((int,), "an integer >= 64", lambda v: v >= 64),
    "schema": ((str,), "a field list like 'brewery VARCHAR, abv DOUBLE' or a JSON schema", lambda v: v.strip() != ""),
    "reasoning": ((str,), "one of 'off', 'on', 'auto'", lambda v: v in REASONING_MODES),
    "max_reasoning_tokens": ((int,), "a non-negative integer", lambda v: v >= 0),
    "return_reasoning": ((bool,), "a boolean", lambda v: True),
    "reasoning_threshold": ((int, float), "a number in [0, 1]", lambda v: 0.0 <= v <= 1.0),
    "reasoning_classifier": ((str,), "a model directory", lambda v: v.strip() != ""),
    "cascade_threshold": ((int, float), "a number in [0, 1]", lambda v: 0.0 <= v <= 1.0),
    "target_precision": ((int, float), "a number in (0, 1)", lambda v: 0.0 < v < 1.0),
    "target_recall": ((int, float), "a number in (0, 1)", lambda v: 0.0 < v < 1.0),
    "calibration_sample": ((int,), "an integer >= 10", lambda v: v >= 10),
    "calibration_seed": ((int,), "an integer", lambda v: True),
    "failure_probability": ((int, float), "a number in (0, 1)", lambda v: 0.0 < v < 1.0),
}
OPTION_NAMES: tuple[str, ...] = tuple(sorted(_SPECS))


def _allowed() -> str:
    return ", ".join(OPTION_NAMES)


def check_option(name: Any, value: Any, where: str = "option") -> Any:
    """Return ``value`` normalised (ints for floats like 8.0 where an int is wanted); raise ``ValueError``."""
    if not isinstance(name, str) or name not in _SPECS:
        raise ValueError(f"unknown {where} {name!r}; allowed options: {_allowed()}")
    if name == "model" and isinstance(value, (list, tuple)):
        return _cascade(value, where)
    types, rule, check = _SPECS[name]
    if value is None:
        raise ValueError(f"{where} {name!r} must be {rule}, got NULL")
    if isinstance(value, bool) and bool not in types:
        raise ValueError(f"{where} {name!r} must be {rule}, got a boolean {value!r}")
    if int in types and float not in types and isinstance(value, float) and value.is_integer():
        value = int(value)  # {'max_tokens': 8.0}
    if float in types and not isinstance(value, (int, float)):
        try:  # DuckDB hands decimals for literals like 0.5
            from decimal import Decimal

            if isinstance(value, Decimal):
                value = float(value)
        except Exception:  # pragma: no cover
            pass
    if not isinstance(value, types):
        raise ValueError(f"{where} {name!r} must be {rule}, got {type(value).__name__} {value!r}")
    if float in types:
        value = float(value)
    if not check(value):
        raise ValueError(f"{where} {name!r} must be {rule}, got {value!r}")
    return value


def _cascade(models: list | tuple, where: str) -> tuple[str, ...] | str:
    """``model => ['small', 'large']``: distinct non-empty names, as a tuple (options are hashed); one name is
    just that model."""
    if not models or any(not isinstance(m, str) or not m.strip() for m in models):
        raise ValueError(f"{where} 'model' must be a model name or a non-empty list of model names, got {models!r}")
    if len(set(models)) != len(models):
        raise ValueError(f"{where} 'model' lists a model twice: {list(models)!r}")
    return models[0] if len(models) == 1 else tuple(models)


def validate_options(options: Mapping[str, Any] | Iterable[tuple[str, Any]] | None,
                     where: str = "option") -> tuple[tuple[str, Any], ...]:
    """Validate an options struct/dict; return it as ``LLMCall.options`` wants it: pairs sorted by key.

    ``None`` (SQL NULL struct) means no options; NULL values inside the struct are dropped.
    """
    if options is None:
        return ()
    if isinstance(options, Mapping):
        items = list(options.items())
    else:
        try:
            items = [tuple(p) for p in options]
        except TypeError:
            raise ValueError(f"options must be a struct/dict of name -> value, got {type(options).__name__}")
        if any(len(p) != 2 for p in items):
            raise ValueError("options must be (name, value) pairs")
    out: dict[str, Any] = {}
    for name, value in items:
        if value is None and isinstance(name, str) and name in _SPECS:
            continue  # a NULL member of a struct: not set
        if name in out:
            raise ValueError(f"{where} {name!r} is given twice")
        out[name] = check_option(name, value, where)
    return tuple(sorted(out.items()))


def merge_options(defaults: Mapping[str, Any] | None, call_options: Iterable[tuple[str, Any]] = ()) -> dict[str, Any]:
    """Session defaults overridden by the call's own options, both validated."""
    merged = dict(validate_options(defaults or {}, where="session option"))
    merged.update(validate_options(call_options))
    return merged

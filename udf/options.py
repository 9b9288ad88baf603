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
| ``model`` | str | session model | which model answers (the session maps it to a backend) |
| ``system`` | str | see ``udf.prompts`` | the system prompt at the head of every prompt |
| ``max_field_chars`` | int >= 16 | 4000 | field values longer than this are truncated (see ``udf.prompts``) |
| ``schema`` | str | none | ``llm_extract``'s output: a field list (``'brewery VARCHAR, abv DOUBLE, styles VARCHAR[]'``) or a JSON schema; see ``udf.extract`` |
| ``reorder_fields`` | bool | false | let the optimiser also reorder the fields inside each prompt (GGR's per-row field order: higher prefix hit rates, but the prompt's wording changes, so a model may answer differently); false keeps the written field order and reorders rows only, so results equal the plain evaluation |
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

DEFAULT_MAX_TOKENS = 32
DEFAULT_MAX_FIELD_CHARS = 4000
# Optimisations must never change results: reordering the fields of a prompt rewords it, so it is opt-in.
DEFAULT_REORDER_FIELDS = False

# name -> (accepted python types, description of the rule, check)
_SPECS: dict[str, tuple[tuple[type, ...], str, Any]] = {
    "max_tokens": ((int,), "a positive integer", lambda v: v >= 1),
    "temperature": ((int, float), "a number in [0, 100]", lambda v: 0.0 <= v <= 100.0),
    "top_p": ((int, float), "a number in (0, 1]", lambda v: 0.0 < v <= 1.0),
    "top_k": ((int,), "a non-negative integer", lambda v: v >= 0),
    "seed": ((int,), "an integer", lambda v: True),
    "model": ((str,), "a non-empty string", lambda v: v.strip() != ""),
    "system": ((str,), "a string", lambda v: True),
    "max_field_chars": ((int,), "an integer >= 16", lambda v: v >= 16),
    "reorder_fields": ((bool,), "a boolean", lambda v: True),
    "schema": ((str,), "a field list like 'brewery VARCHAR, abv DOUBLE' or a JSON schema", lambda v: v.strip() != ""),
}
OPTION_NAMES: tuple[str, ...] = tuple(sorted(_SPECS))


def _allowed() -> str:
    return ", ".join(OPTION_NAMES)


def check_option(name: Any, value: Any, where: str = "option") -> Any:
    """Return ``value`` normalised (ints for floats like 8.0 where an int is wanted); raise ``ValueError``."""
    if not isinstance(name, str) or name not in _SPECS:
        raise ValueError(f"unknown {where} {name!r}; allowed options: {_allowed()}")
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

"""Prompt layout and field serialisation.

Every prompt has the same shape, so that everything before the fields is one prefix shared by
all rows of a call, and rows whose leading fields agree share even longer prefixes once the
optimiser has ordered rows and fields::

    {system prompt}

    Task: {instruction, or a preset's expansion}
    Labels: "positive", "negative", "neutral"      <- llm_classify only

    Input:
    "review": "Great beer, would buy again"
    "stars": 5

    Answer yes or no:

* The system prompt is ``DEFAULT_SYSTEM`` unless the ``system`` option replaces it (an empty
  string drops the line).
* Fields come one per line as ``"name": value`` in the order the optimiser chose for the row
  (the written order when reordering is off).
* The answer cue ends the prompt: ``Answer:`` (``llm``), ``Answer yes or no:`` (``llm_filter``),
  ``Label:`` (``llm_classify``), ``Score 1-5:`` (``llm_score``). The constrained functions'
  choices carry a leading space (`` yes``, `` positive``, `` 3``) because that is how a model
  continues after a colon.

Values are written in one stable text form, JSON-like:

| value | written as |
|---|---|
| NULL | ``null`` |
| text | a JSON string (quotes and newlines escaped, non-ASCII kept) |
| bytes (BLOB) | decoded as UTF-8 with ``errors="replace"`` (bad bytes become U+FFFD), then as text |
| bool | ``true`` / ``false`` |
| int, Decimal | digits as written (``42``, ``2.50``) |
| float | shortest round-trip form (``0.1``, ``1e+20``); ``NaN``, ``Infinity``, ``-Infinity`` |
| date, time, timestamp | ISO 8601 in a JSON string (``"2024-05-01"``, ``"2024-05-01T12:30:00"``) |
| list, struct/dict | ``[a, b]`` / ``{"k": v}`` with the same rules inside |
| anything else | ``str(value)`` as a JSON string |

Truncation: a value whose text (the string itself, or the rendering of a non-text value) is
longer than ``max_field_chars`` (option, default 4,000 characters) keeps its first
``max_field_chars`` characters followed by the marker `` ...[truncated N chars]`` (N = how many were
cut). A prompt that still exceeds the model's context is not sent in pieces: the backend rejects
it and that row's value is NULL with the backend's reason recorded.
"""
from __future__ import annotations

import datetime as _dt
import decimal
import json
import math
import sys
import uuid
from typing import Any, Sequence

from udf.options import DEFAULT_MAX_FIELD_CHARS
from udf.presets import expand
from udf.registry import REGISTRY

DEFAULT_SYSTEM = "You are a careful data analyst. Read the input record and reply with the answer only."

CUES = {name: spec.cue for name, spec in REGISTRY.items()}


def _truncate(text: str, max_chars: int | None) -> str:
    if max_chars is None or len(text) <= max_chars:
        return text
    return f"{text[:max_chars]} ...[truncated {len(text) - max_chars} chars]"


def _json_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _is_pandas_missing(value: Any) -> bool:
    pd = sys.modules.get("pandas")
    return pd is not None and (value is pd.NaT or value is pd.NA)


def is_null(value: Any) -> bool:
    """SQL NULL as it reaches Python: None, or pandas' NA / NaT (a float NaN is a value, written NaN)."""
    return value is None or _is_pandas_missing(value)


def _render(value: Any) -> tuple[str, bool]:
    """(text, is_text): the rendering without truncation; is_text marks values written as JSON strings."""
    if value is None or _is_pandas_missing(value):
        return "null", False
    if hasattr(value, "item") and type(value).__module__ == "numpy":  # numpy scalars -> python
        value = value.item()
        if value is None:
            return "null", False
    if isinstance(value, str):
        return value, True
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace"), True
    if isinstance(value, bool):
        return ("true" if value else "false"), False
    if isinstance(value, int):
        return str(value), False
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN", False
        if math.isinf(value):
            return ("Infinity" if value > 0 else "-Infinity"), False
        return repr(value), False
    if isinstance(value, decimal.Decimal):
        return str(value), False
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat(), True
    if isinstance(value, _dt.timedelta):
        return str(value), True
    if isinstance(value, uuid.UUID):
        return str(value), True
    if isinstance(value, dict):
        inner = ", ".join(f"{_json_str(str(k))}: {render_value(v, None)}" for k, v in value.items())
        return "{" + inner + "}", False
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(render_value(v, None) for v in value) + "]", False
    return str(value), True


def render_value(value: Any, max_chars: int | None = DEFAULT_MAX_FIELD_CHARS) -> str:
    """The stable text form of one field value (see the module doc), truncated to ``max_chars``."""
    text, is_text = _render(value)
    text = _truncate(text, max_chars)
    return _json_str(text) if is_text else text


def render_field(name: str, value_text: str) -> str:
    """One field line: ``"name": value``."""
    return f"{_json_str(name)}: {value_text}"


def prompt_head(function: str, instruction: str | None, labels: Sequence[str] | None = None,
                system: str | None = None) -> str:
    """Everything before the fields: the prefix that every row of one call shares."""
    system = DEFAULT_SYSTEM if system is None else system
    parts = []
    if system.strip():
        parts.append(system.strip() + "\n\n")
    parts.append(f"Task: {expand(function, instruction).strip()}\n")
    if function == "llm_classify":
        parts.append("Labels: " + ", ".join(_json_str(lbl) for lbl in labels or ()) + "\n")
    parts.append("\nInput:\n")
    return "".join(parts)


def build_prompt(head: str, function: str, names: Sequence[str], value_texts: Sequence[str]) -> str:
    """``head`` + the fields in the given order (already rendered) + the answer cue."""
    lines = "".join(render_field(n, v) + "\n" for n, v in zip(names, value_texts))
    return f"{head}{lines}\n{CUES[function]}"


def make_prompt(function: str, instruction: str | None, fields: Sequence[tuple[str, Any]],
                labels: Sequence[str] | None = None, system: str | None = None,
                max_field_chars: int | None = DEFAULT_MAX_FIELD_CHARS) -> str:
    """Convenience: the full prompt for ``fields`` (``(name, raw value)`` pairs, in order)."""
    head = prompt_head(function, instruction, labels, system)
    return build_prompt(head, function, [n for n, _ in fields],
                        [render_value(v, max_field_chars) for _, v in fields])

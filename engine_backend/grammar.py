"""Grammar-constrained decoding: the output matches a regular expression or a JSON schema.

The regex (a JSON schema is turned into one by ``outlines_core``) is compiled once per tokenizer into an
index over the vocabulary: for every state of the expression's automaton, the tokens that keep the output
inside the language. Each request walks that index with its own ``Guide``; at every step the guide writes
its allowed tokens as a bitmask, and one vectorised unpack turns the batch's bitmasks into a boolean mask
over the logits (no Python loop over the vocabulary). EOS is allowed exactly where the expression may end;
a state from which nothing but EOS can follow finishes the request (checked once per automaton state).

Why outlines-core: a small Rust library with CPU wheels and no Python dependencies (xgrammar needs
transformers and triton at install time); its index is built once per expression and cached here, and the
per-step cost is one bitmask write per constrained row.
"""
from __future__ import annotations

import functools
import json
import math
from typing import Any

import numpy as np
import torch


class GrammarConstraint:
    """A compiled expression over one tokenizer's vocabulary; ``start()`` gives a request its own state (the
    protocol of ``engine_backend.constraints``)."""

    bounded = False  # an expression may allow long outputs: max_tokens still applies

    def __init__(self, regex: str, tokenizer, vocab_size: int):
        import outlines_core

        self.regex = regex
        self.vocab_size = vocab_size  # the logits' width (the embedding may be wider than the vocabulary)
        self.eos_ids = [int(t) for t in tokenizer.eos_token_ids]
        self._ends: dict[int, bool] = {}  # automaton state -> nothing but EOS may follow
        try:
            self.index = outlines_core.Index(regex, _vocabulary(tokenizer))
        except Exception as exc:  # an expression the library cannot compile
            raise ValueError(f"cannot compile the output constraint: {exc}") from None

    def start(self):
        import outlines_core

        return outlines_core.Guide(self.index)

    def allowed_mask(self, guides: list) -> torch.Tensor:
        """[len(guides), vocab_size] bool: the tokens each guide allows now (EOS ids where it may end)."""
        words = (self.vocab_size + 31) // 32
        bits = np.zeros((len(guides), words), dtype=np.int32)
        for i, guide in enumerate(guides):
            guide.write_mask_into(bits[i].ctypes.data, words, 4)
        # token t is bit t % 32 of word t // 32 (little-endian words): unpack bytes little bit first
        unpacked = np.unpackbits(bits.view(np.uint8), axis=1, bitorder="little")[:, : self.vocab_size]
        mask = torch.from_numpy(unpacked.view(np.bool_))
        eos = [t for t in self.eos_ids if t < self.vocab_size]
        if eos:  # the library knows one EOS; every EOS id of the tokenizer ends the output alike
            ends = mask[:, eos].any(dim=1, keepdim=True)
            mask[:, eos] = ends
        return mask

    def mask_rows(self, logits: torch.Tensor, guides: list) -> None:
        """Set every disallowed logit of the rows to -inf, in place (``logits``: [len(guides), vocab])."""
        mask = self.allowed_mask(guides).to(logits.device)
        logits.masked_fill_(~mask[:, : logits.shape[1]], float("-inf"))

    def draft_step(self, guide, token: int):
        """No speculation under a grammar: a guide is advanced in place, and masks along a draft would need
        copies of it (outlines-core guides roll back, but not cheaply per row)."""
        return None

    def step(self, guide, token: int) -> tuple[Any, bool]:
        """Advance by the sampled ``token``; True when the output is complete: EOS, or a state from which only
        EOS may follow. Where the expression may end but also go on (``[0-9]+``), the model chooses."""
        if token in self.eos_ids:
            return guide, True
        guide.advance(int(token), return_tokens=False)
        state = guide.get_state()
        ends = self._ends.get(state)
        if ends is None:  # once per automaton state: listing a state's tokens costs a list of the vocabulary
            allowed = self.index.get_allowed_tokens(state)
            ends = self._ends[state] = all(t in self.eos_ids for t in allowed)
        return guide, ends


def regex_for(json_schema: Any = None, regex: str | None = None) -> str:
    """The regular expression of a constraint given as a JSON schema (dict or JSON text) or a regex."""
    if (json_schema is None) == (regex is None):
        raise ValueError("give exactly one of json_schema and regex")
    if regex is not None:
        if not isinstance(regex, str) or not regex:
            raise ValueError("regex must be a non-empty string")
        return regex
    from outlines_core.json_schema import build_regex_from_schema

    if isinstance(json_schema, str):
        try:
            json_schema = json.loads(json_schema)
        except ValueError as exc:
            raise ValueError(f"json_schema is not valid JSON: {exc}") from None
    text = json.dumps(_enforceable(json_schema), sort_keys=True)
    try:
        return build_regex_from_schema(text, r"[ ]?")  # at most one space between tokens: short outputs
    except Exception as exc:
        raise ValueError(f"unsupported json_schema: {exc}") from None


ENUM_RANGE_LIMIT = 1000  # an integer range up to this many values becomes an enum the grammar can enforce

_NUMERIC_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
# keywords the regex compiler ignores although an output could break them: refused, never silently ignored
_UNENFORCED = ("contains", "minContains", "maxContains", "dependentRequired", "dependentSchemas", "propertyNames",
               "if", "not")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")  # name -> subschema
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")  # [subschema, ...]
_SCHEMA_ONE = ("items", "additionalProperties", "then", "else")  # a subschema (or a boolean)


def _enforceable(schema: Any) -> Any:
    """The schema rewritten so that every output of its regex validates, or ValueError naming what cannot be
    enforced. The regex compiler (outlines-core) ignores numeric bounds, ``uniqueItems``, ``minProperties`` and a
    few more keywords, and writes property names into the output unescaped; so here
    - a bounded integer range (``minimum``/``maximum``, exclusive bounds, ``multipleOf``; e.g. a 1..5 score) becomes
      the enum of its values; any other numeric bound is refused (a number range, a one-sided or huge range);
    - a property name that JSON must escape (a quote, a backslash, a control character) is given escaped;
    - a keyword the compiler would ignore is refused unless the output meets it anyway;
    - outlines' digit-count extensions get at least one digit after a '.' or an exponent sign ("1." is not JSON).
    Only subschemas are walked: enum/const values and property names are data."""
    if isinstance(schema, list):  # items given as a list (draft 4's tuple form)
        return [_enforceable(s) for s in schema]
    if not isinstance(schema, dict):
        return schema  # true / false
    out = dict(schema)
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {_name(n) if key == "properties" else n: _enforceable(v) for n, v in out[key].items()}
    if isinstance(out.get("required"), list) and isinstance(schema.get("properties"), dict):
        out["required"] = [_name(n) if isinstance(n, str) else n for n in out["required"]]
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [_enforceable(v) for v in out[key]]
    for key in _SCHEMA_ONE:
        if key in out:
            out[key] = _enforceable(out[key])
    _refuse_ignored(out)
    for kind in ("Fraction", "Exponent"):  # {0,n} digits after '.' / 'e+' would allow "1." and "1e+"
        if f"maxDigits{kind}" in out and f"minDigits{kind}" not in out:
            out[f"minDigits{kind}"] = 1
    kind = out.get("type")
    numeric = kind in (None, "integer", "number") or (isinstance(kind, list) and {"integer", "number"} & set(kind))
    if numeric and any(k in out for k in _NUMERIC_BOUNDS) and "enum" not in out and "const" not in out:
        if kind != "integer":
            raise ValueError(f"unsupported json_schema: bounds on a {out.get('type', 'value')!r} cannot be enforced "
                             f"(only an integer range of at most {ENUM_RANGE_LIMIT} values): {_short(schema)}")
        values = _integer_range(out, schema)
        rest = {k: v for k, v in out.items() if k not in ("type", *_NUMERIC_BOUNDS)}
        return {**rest, "enum": values}
    return out


def _name(name: Any) -> Any:
    """A property name as the regex must spell it: its JSON-escaped text (the compiler copies it verbatim)."""
    return json.dumps(name, ensure_ascii=False)[1:-1] if isinstance(name, str) else name


def _short(schema: Any) -> str:
    text = json.dumps(schema, sort_keys=True)
    return text if len(text) <= 200 else text[:197] + "..."


def _refuse_ignored(s: dict) -> None:
    for key in _UNENFORCED:
        if key in s:
            raise ValueError(f"unsupported json_schema: {key!r} cannot be enforced: {_short(s)}")
    props = s.get("properties") if isinstance(s.get("properties"), dict) else None
    if s.get("uniqueItems") is True and not (isinstance(s.get("maxItems"), int) and s["maxItems"] <= 1):
        raise ValueError(f"unsupported json_schema: uniqueItems cannot be enforced (only with maxItems <= 1): "
                         f"{_short(s)}")
    required = s.get("required") if isinstance(s.get("required"), list) else []
    if required and not (props is not None and set(required) <= set(props)):
        raise ValueError(f"unsupported json_schema: required names a property that properties does not declare: "
                         f"{_short(s)}")
    if "minProperties" in s and not (props is not None and isinstance(s["minProperties"], int)
                                     and s["minProperties"] <= len(set(required))):
        raise ValueError(f"unsupported json_schema: minProperties cannot be enforced (only when the required "
                         f"properties meet it): {_short(s)}")
    if "maxProperties" in s and not (props is not None and isinstance(s["maxProperties"], int)
                                     and len(props) <= s["maxProperties"]):
        raise ValueError(f"unsupported json_schema: maxProperties cannot be enforced (only when the declared "
                         f"properties meet it): {_short(s)}")


def _integer_range(s: dict, original: dict) -> list[int]:
    """The integers an integer schema's bounds allow, in order; ValueError if unbounded, huge or empty."""
    for key in _NUMERIC_BOUNDS:
        v = s.get(key)
        if key in s and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise ValueError(f"unsupported json_schema: {key} must be a finite number (draft 4's boolean "
                             f"exclusive bounds are not supported), got {v!r}")
    lows = [math.ceil(s["minimum"])] if "minimum" in s else []
    lows += [math.floor(s["exclusiveMinimum"]) + 1] if "exclusiveMinimum" in s else []
    highs = [math.floor(s["maximum"])] if "maximum" in s else []
    highs += [math.ceil(s["exclusiveMaximum"]) - 1] if "exclusiveMaximum" in s else []
    if not lows or not highs or min(highs) - max(lows) >= ENUM_RANGE_LIMIT:
        raise ValueError(f"unsupported json_schema: integer bounds are enforced for a range of at most "
                         f"{ENUM_RANGE_LIMIT} values with both ends given: {_short(original)}")
    step = s.get("multipleOf")
    if step is not None and step <= 0:
        raise ValueError(f"unsupported json_schema: multipleOf must be positive, got {step!r}")
    values = [v for v in range(max(lows), min(highs) + 1)
              if step is None or (v % step == 0 if isinstance(step, int) else (v / step).is_integer())]
    if not values:
        raise ValueError(f"unsupported json_schema: no integer satisfies the bounds: {_short(original)}")
    return values


@functools.lru_cache(maxsize=8)
def _vocabulary(tokenizer):
    import outlines_core

    eos = set(int(t) for t in tokenizer.eos_token_ids)
    by_bytes: dict[bytes, list[int]] = {}
    for i in range(tokenizer.vocab_size):
        if i in eos:
            continue
        piece = tokenizer.decode_token_bytes(i)
        if piece:  # special tokens decode to nothing: never part of a constrained output
            by_bytes.setdefault(piece, []).append(i)
    return outlines_core.Vocabulary(min(eos), by_bytes)


@functools.lru_cache(maxsize=64)
def _compiled(regex: str, tokenizer, vocab_size: int) -> GrammarConstraint:
    return GrammarConstraint(regex, tokenizer, vocab_size)


def compile_constraint(tokenizer, vocab_size: int, *, json_schema: Any = None, regex: str | None = None):
    """A cached ``GrammarConstraint`` for this tokenizer (the index is built once per expression)."""
    return _compiled(regex_for(json_schema, regex), tokenizer, vocab_size)

"""Grammar-constrained decoding: the output matches a regular expression or a JSON schema.

The regex (a JSON schema is turned into one by ``outlines_core``) is compiled once per tokenizer into an
index over the vocabulary: for every state of the expression's automaton, the tokens that keep the output
inside the language. Each request walks that index with its own ``Guide``; at every step the guide writes
its allowed tokens as a bitmask, and one vectorised unpack turns the batch's bitmasks into a boolean mask
over the logits (no Python loop over the vocabulary). EOS is allowed exactly where the expression may end;
a state from which nothing but EOS can follow finishes the request (checked once per automaton state).

JSON schemas: ``_enforceable`` rewrites a schema so that every output of its regex validates, or refuses it with
a ``ValueError`` ("unsupported json_schema: ..."; a 400 at the server) naming what the compiler would ignore. Integer
and number subschemas get their own regexes (``engine_backend.json_numbers``): bounds of any kind enforced digit by
digit, and digits capped (integers at most 18 digits; numbers at most 15 digits before the point and 15 after, no
exponent), so that a model cannot write digits until ``max_tokens``.

Why outlines-core: a small Rust library with CPU wheels and no Python dependencies (xgrammar needs
transformers and triton at install time); its index is built once per expression and cached here, and the
per-step cost is one bitmask write per constrained row.
"""
from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np
import torch

from engine_backend import json_numbers


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
    numbers = _Numbers(json.dumps(json_schema))
    text = json.dumps(_enforceable(json_schema, numbers), sort_keys=True)
    try:
        regex = build_regex_from_schema(text, r"[ ]?")  # at most one space between tokens: short outputs
    except Exception as exc:
        raise ValueError(f"unsupported json_schema: {exc}") from None
    return numbers.splice(regex)


class _Numbers:
    """The regexes of a schema's integer and number subschemas: each subschema is replaced by a string constant
    (a placeholder the schema itself never contains), which the compiler copies into its regex verbatim, quoted;
    ``splice`` then puts the number regexes in their place."""

    def __init__(self, schema_text: str):
        self.prefix = "__llm_sql_number_"
        while self.prefix in schema_text:
            self.prefix += "_"
        self.regexes: list[str] = []

    def placeholder(self, regex: str) -> dict:
        self.regexes.append(regex)
        return {"const": f"{self.prefix}{len(self.regexes) - 1}__"}

    def splice(self, regex: str) -> str:
        for i, number in enumerate(self.regexes):  # a subschema under $defs may appear any number of times
            regex = regex.replace(json.dumps(f"{self.prefix}{i}__"), number)
        if self.prefix in regex:
            raise ValueError("unsupported json_schema: the compiler changed a number placeholder")
        return regex


_NUMERIC_BOUNDS = json_numbers.BOUND_KEYWORDS
_NUMERIC = ("integer", "number")
# keywords the regex compiler ignores although an output could break them: refused, never silently ignored
_UNENFORCED = ("contains", "minContains", "maxContains", "dependentRequired", "dependentSchemas", "propertyNames",
               "if", "not")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")  # name -> subschema
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")  # [subschema, ...]
_SCHEMA_ONE = ("items", "additionalProperties", "then", "else")  # a subschema (or a boolean)
_COMBINED = ("anyOf", "oneOf", "allOf", "$ref")  # the compiler follows these and ignores "type" beside them


def _enforceable(schema: Any, numbers: _Numbers) -> Any:
    """The schema rewritten so that every output of its regex validates, or ValueError naming what cannot be
    enforced. The regex compiler (outlines-core) ignores numeric bounds, ``uniqueItems``, ``minProperties`` and a
    few more keywords, and writes property names into the output unescaped; so here
    - an ``integer`` or ``number`` subschema becomes a placeholder for its own regex (``json_numbers``: bounds,
      one- or two-sided, inclusive or exclusive, enforced digit by digit; ``multipleOf`` on an integer range of at
      most 1000 values; digits capped), and a type list with ``integer``/``number`` becomes an ``anyOf`` of one
      schema per type; numeric bounds anywhere else (no type, beside ``anyOf``/``$ref``...) are refused, and an
      ``enum``/``const`` keeps only the numbers within its bounds;
    - a property name that JSON must escape (a quote, a backslash, a control character) is given escaped;
    - a keyword the compiler would ignore is refused unless the output meets it anyway;
    - outlines' digit-count extensions get at least one digit after a '.' or an exponent sign ("1." is not JSON).
    Only subschemas are walked: enum/const values and property names are data."""
    if isinstance(schema, list):  # items given as a list (draft 4's tuple form)
        return [_enforceable(s, numbers) for s in schema]
    if not isinstance(schema, dict):
        return schema  # true / false
    kind = schema.get("type")
    if (isinstance(kind, list) and set(_NUMERIC) & set(kind) and not any(k in schema for k in _COMBINED)
            and "enum" not in schema and "const" not in schema):
        return _one_schema_per_type(schema, numbers)
    out = dict(schema)
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {_name(n) if key == "properties" else n: _enforceable(v, numbers) for n, v in out[key].items()}
    if isinstance(out.get("required"), list) and isinstance(schema.get("properties"), dict):
        out["required"] = [_name(n) if isinstance(n, str) else n for n in out["required"]]
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [_enforceable(v, numbers) for v in out[key]]
    for key in _SCHEMA_ONE:
        if key in out:
            out[key] = _enforceable(out[key], numbers)
    _refuse_ignored(out)
    for digits in ("Fraction", "Exponent"):  # {0,n} digits after '.' / 'e+' would allow "1." and "1e+"
        if f"maxDigits{digits}" in out and f"minDigits{digits}" not in out:
            out[f"minDigits{digits}"] = 1
    bounded = any(k in out for k in _NUMERIC_BOUNDS)
    try:
        if "enum" in out or "const" in out:
            return _within_bounds(out) if bounded else out
        extension = any(k.startswith(("minDigits", "maxDigits")) for k in out)  # outlines' digit counts
        if kind in _NUMERIC and not extension and not any(k in out for k in _COMBINED):
            return numbers.placeholder(json_numbers.schema_regex(out, kind))
    except ValueError as exc:
        raise ValueError(f"unsupported json_schema: {exc}: {_short(schema)}") from None
    if bounded and (kind is None or kind in _NUMERIC or isinstance(kind, list)):
        raise ValueError(f"unsupported json_schema: numeric bounds are enforced on a schema of type integer or "
                         f"number (alone or in a list of types), not with no type, next to anyOf/oneOf/allOf/$ref "
                         f"or outlines' digit counts: {_short(schema)}")
    return out


# keywords that apply to values of one type only (the compiler reads "properties" as an object even beside a
# "type": "null"): a type list's schema for one type keeps only those of its own type
_KEYWORD_TYPE = {**{k: "object" for k in ("properties", "required", "additionalProperties", "patternProperties",
                                          "minProperties", "maxProperties", "propertyNames", "dependentRequired",
                                          "dependentSchemas", "unevaluatedProperties")},
                 **{k: "array" for k in ("items", "prefixItems", "additionalItems", "minItems", "maxItems",
                                         "uniqueItems", "contains", "minContains", "maxContains", "unevaluatedItems")},
                 **{k: "string" for k in ("minLength", "maxLength", "pattern", "format", "contentEncoding",
                                          "contentMediaType")},
                 **{k: "number" for k in _NUMERIC_BOUNDS}}


def _one_schema_per_type(schema: dict, numbers: _Numbers) -> dict:
    """A schema with a list of types as the anyOf of one schema per type, each with the keywords that apply to it;
    definitions and other "$" keywords stay at this level (a "$ref" is resolved from the root)."""
    here = {k: v for k, v in schema.items() if k.startswith("$") or k == "definitions"}
    out = _enforceable(here, numbers)  # walks $defs/definitions
    out["anyOf"] = [_enforceable({**{k: v for k, v in schema.items() if k not in here and k != "type"
                                     and _KEYWORD_TYPE.get(k, t) == ("number" if t in _NUMERIC else t)},
                                  "type": t}, numbers) for t in schema["type"]]
    return out


def _within_bounds(s: dict) -> dict:
    """An enum/const without the numbers its bounds exclude (the compiler writes the values, ignoring bounds)."""
    values = s["enum"] if "enum" in s else [s["const"]]
    if not isinstance(values, list):
        return s
    kept = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float))
            or json_numbers.satisfies(v, s)]
    if not kept:
        raise ValueError("no value of the enum/const satisfies the bounds")
    return {**{k: v for k, v in s.items() if k not in ("enum", "const")}, "enum": kept}


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

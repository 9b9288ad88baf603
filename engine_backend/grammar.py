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


def _enforceable(schema: Any) -> Any:
    """The schema with what the regex compiler ignores made explicit: a bounded integer range (``minimum`` /
    ``maximum``, e.g. a 1..5 score) becomes the enum of its values, so the output validates."""
    if isinstance(schema, list):
        return [_enforceable(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _enforceable(v) for k, v in schema.items()}
    if out.get("type") == "integer" and "minimum" in out and "maximum" in out:
        lo, hi = out["minimum"], out["maximum"]
        if isinstance(lo, int) and isinstance(hi, int) and 0 <= hi - lo < ENUM_RANGE_LIMIT:
            rest = {k: v for k, v in out.items() if k not in ("type", "minimum", "maximum")}
            return {**rest, "enum": list(range(lo, hi + 1))}
    return out


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

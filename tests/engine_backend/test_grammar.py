"""Grammar constraints alone (no model): any walk through the allowed tokens ends in an output that parses and
validates. Random logits stand in for a model, which is the hardest case: it never "wants" to finish."""
from __future__ import annotations

import json
import random

import jsonschema
import pytest
import torch

from engine_backend.grammar import compile_constraint, regex_for
from engine_backend.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from engine_backend.testing import make_tiny_model

    return Tokenizer.from_dir(make_tiny_model(tmp_path_factory.mktemp("grammar") / "tiny", arch="llama"))


def random_schema(rng: random.Random, depth: int = 0) -> dict:
    """One schema of a fixed family: objects, enums, arrays, numbers, booleans, bounded strings, nesting."""
    kinds = ["integer", "number", "boolean", "string", "enum"] + (["array", "object"] if depth < 2 else [])
    kind = rng.choice(kinds)
    if kind == "string":
        return {"type": "string", "maxLength": rng.randint(1, 6)}
    if kind == "enum":
        return {"enum": rng.sample(["red", "green", "blue", "amber ale", "IPA", "Stout"], rng.randint(1, 4))}
    if kind == "array":
        return {"type": "array", "items": random_schema(rng, depth + 1), "maxItems": rng.randint(1, 3)}
    if kind == "object":
        names = rng.sample(["brewery", "abv", "style", "score", "ok", "notes"], rng.randint(1, 3))
        return {"type": "object", "properties": {n: random_schema(rng, depth + 1) for n in names},
                "required": names}
    return {"type": kind}


def walk(constraint, tokenizer, seed: int, limit: int = 600) -> str:
    gen = torch.Generator().manual_seed(seed)
    guide, out = constraint.start(), []
    for _ in range(limit):
        logits = torch.randn(1, constraint.vocab_size, generator=gen)
        constraint.mask_rows(logits, [guide])
        token = int(logits.argmax())
        assert logits[0, token] > float("-inf"), "no token allowed"
        guide, done = constraint.step(guide, token)
        if token not in constraint.eos_ids:
            out.append(token)
        if done:
            return tokenizer.decode(out)
    raise AssertionError(f"no complete output in {limit} tokens: {tokenizer.decode(out)!r}")


def test_random_schemas_give_valid_json(tokenizer):
    rng = random.Random(0)
    for case in range(200):
        schema = {"type": "object", "properties": {"x": random_schema(rng)}, "required": ["x"]}
        constraint = compile_constraint(tokenizer, tokenizer.vocab_size, json_schema=schema)
        text = walk(constraint, tokenizer, seed=case)
        jsonschema.validate(json.loads(text), schema)


def test_regex_and_batched_masks(tokenizer):
    constraint = compile_constraint(tokenizer, tokenizer.vocab_size, regex=r"(yes|no|[0-9]{2})")
    guides = [constraint.start() for _ in range(3)]
    mask = constraint.allowed_mask(guides)
    assert mask.shape == (3, tokenizer.vocab_size) and mask.any(dim=1).all()
    assert not mask[:, list(constraint.eos_ids)].any()  # nothing is complete yet
    for seed in range(20):
        assert walk(constraint, tokenizer, seed) in {"yes", "no"} | {f"{i:02d}" for i in range(100)}


def test_bad_constraints_are_clear_errors(tokenizer):
    with pytest.raises(ValueError, match="exactly one"):
        regex_for()
    with pytest.raises(ValueError, match="not valid JSON"):
        regex_for(json_schema="{nope")
    with pytest.raises(ValueError, match="non-empty"):
        regex_for(regex="")

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
    kinds = ["integer", "number", "boolean", "string", "enum", "range"] + (["array", "object"] if depth < 2 else [])
    kind = rng.choice(kinds)
    if kind == "range":  # bounds the regex compiler ignores: enforced as an enum (engine_backend.grammar)
        lo = rng.randint(-5, 5)
        return {"type": "integer", "minimum": lo, "maximum": lo + rng.randint(0, 20)}
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


SCHEMA = {"type": "object", "properties": {"brewery": {"type": "string", "maxLength": 8},
                                           "abv": {"type": "number"},
                                           "style": {"enum": ["IPA", "Stout", "Lager"]}},
          "required": ["brewery", "abv", "style"]}


_REFERENCE: dict = {}


def constrained_reference(model_dir, prompt_ids, constraint, max_new):
    """transformers greedy decoding (its own KV cache) with the same constraint applied to its logits at every
    step, through a logits processor that walks one guide per prompt."""
    import transformers

    key = (str(model_dir), tuple(map(tuple, prompt_ids)), constraint.regex, max_new)
    if key in _REFERENCE:
        return _REFERENCE[key]
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)

    class Constrained(transformers.LogitsProcessor):
        def __init__(self, start):
            self.start, self.guide = start, None

        def __call__(self, input_ids, scores):
            if self.guide is None:
                self.guide = constraint.start()
            else:  # the token chosen at the previous step
                self.guide, _ = constraint.step(self.guide, int(input_ids[0, -1]))
            scores = scores.clone()
            constraint.mask_rows(scores, [self.guide])
            return scores

    outs = []
    for ids in prompt_ids:
        with torch.no_grad():
            g = model.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False, pad_token_id=0,
                               eos_token_id=list(constraint.eos_ids),
                               attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               logits_processor=transformers.LogitsProcessorList([Constrained(len(ids))]))
        outs.append(g[0, len(ids):].tolist())
    _REFERENCE[key] = outs
    return outs


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_engine_json_schema_equals_transformers_with_the_same_mask(tiny_model_dir, prefix_caching):
    from engine_backend import LLMEngine, SamplingParams

    model_dir = tiny_model_dir("llama")
    engine = LLMEngine(model=str(model_dir), enable_prefix_caching=prefix_caching)
    prompts = [f"Extract the brewery from review {i}: a hoppy pale ale from Hill Farm." for i in range(3)]
    ids = [engine.tokenizer.encode(p) for p in prompts]
    outs = engine.generate(ids, SamplingParams(max_tokens=60, json_schema=SCHEMA))
    constraint = compile_constraint(engine.tokenizer, engine.config.vocab_size, json_schema=SCHEMA)
    ref = constrained_reference(model_dir, ids, constraint, 60)
    def content(tokens):  # the engine stops where only EOS may follow; transformers goes on to sample the EOS
        return tokens[:-1] if tokens and tokens[-1] in constraint.eos_ids else tokens

    for out, want in zip(outs, ref):
        assert content(out.token_ids) == content(want)
        if out.finish_reason == "stop":  # complete: it parses and validates
            jsonschema.validate(json.loads(out.text), SCHEMA)
    assert any(o.finish_reason == "stop" for o in outs)
    with pytest.raises(ValueError, match="at most one output constraint"):
        SamplingParams(choices=["a"], regex="a")
    bad = engine.generate([ids[0]], SamplingParams(json_schema="{nope"))[0]
    assert bad.finish_reason == "error" and "not valid JSON" in bad.error

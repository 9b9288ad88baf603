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


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {n: {"type": "boolean"} for n in ('say "hi"', "back\\slash", "tab\there", "ü",
                                                                       "a.b", "properties")},
     "required": ['say "hi"', "back\\slash", "tab\there", "ü", "a.b", "properties"]},
    {"type": "integer", "exclusiveMinimum": -3, "exclusiveMaximum": 4},
    {"type": "integer", "minimum": 0.5, "maximum": 30, "multipleOf": 7},
    {"type": "integer", "minimum": -2, "maximum": 40, "multipleOf": 0.5},
    {"type": "number", "maxDigitsInteger": 2, "maxDigitsFraction": 2, "maxDigitsExponent": 1},
    {"type": "array", "items": {"enum": [1, 2]}, "maxItems": 1, "uniqueItems": True},
    {"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"type": "boolean"}}, "required": ["a"],
     "minProperties": 1, "maxProperties": 2},
    {"type": "object", "properties": {"x": {"type": "integer", "minimum": 1, "maximum": 3},
                                      "y": {"enum": [{"type": "integer", "minimum": 1, "maximum": 2}]}},
     "required": ["x", "y"], "maxProperties": 2},
], ids=["escaped-names", "exclusive-bounds", "multipleOf", "multipleOf-float", "digit-counts", "unique-one",
        "properties-count", "only-subschemas"])
def test_schemas_the_compiler_only_half_enforces_now_validate(tokenizer, schema):
    """Found by the openai-client schema test's probing: property names were written unescaped ('say "hi"' gave
    invalid JSON), exclusive bounds and multipleOf were ignored, outlines' digit counts allowed "1." and "1e+", and
    an enum value shaped like an integer range was rewritten as if it were a schema; now the outputs validate."""
    constraint = compile_constraint(tokenizer, tokenizer.vocab_size, json_schema=schema)
    for seed in range(40):
        jsonschema.validate(json.loads(walk(constraint, tokenizer, seed)), schema)


@pytest.mark.parametrize("schema,needle", [
    ({"type": "integer", "minimum": 3}, "both ends"),
    ({"type": "integer", "maximum": -3}, "both ends"),
    ({"type": "integer", "minimum": 0, "maximum": 100000}, "at most 1000"),
    ({"type": "integer", "minimum": 1, "maximum": 5, "multipleOf": 7}, "no integer"),
    ({"type": "number", "minimum": 0, "maximum": 1}, "bounds on a 'number'"),
    ({"type": ["integer", "null"], "minimum": 0, "maximum": 3}, "bounds on a"),
    ({"type": "number", "multipleOf": 0.5}, "bounds on a 'number'"),
    ({"type": "integer", "minimum": 0, "maximum": 3, "exclusiveMaximum": True}, "finite number"),
    ({"type": "array", "items": {"type": "boolean"}, "maxItems": 3, "uniqueItems": True}, "uniqueItems"),
    ({"type": "array", "items": {"type": "integer"}, "contains": {"const": 1}}, "'contains'"),
    ({"type": "object", "required": ["a"]}, "does not declare"),
    ({"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["b"]}, "does not declare"),
    ({"type": "object", "properties": {"a": {"type": "boolean"}}, "minProperties": 1}, "minProperties"),
    ({"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"type": "boolean"}}, "maxProperties": 1},
     "maxProperties"),
    ({"type": "object", "properties": {"a": {"type": "integer", "minimum": 0}}, "required": ["a"]}, "both ends"),
    ({"type": "object", "properties": {"a": {"type": "boolean"}}, "if": {"required": ["a"]}}, "'if'"),
])
def test_schemas_the_compiler_would_ignore_are_refused(tokenizer, schema, needle):
    """Each of these compiled to a regex whose outputs break the schema (a bound or keyword silently dropped): an
    output constraint is enforced or refused, never ignored."""
    with pytest.raises(ValueError, match="unsupported json_schema") as err:
        regex_for(json_schema=schema)
    assert needle in str(err.value)

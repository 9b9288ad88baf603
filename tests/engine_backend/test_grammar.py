"""Grammar constraints alone (no model): any walk through the allowed tokens ends in an output that parses and
validates. Random logits stand in for a model, which is the hardest case: it never "wants" to finish."""
from __future__ import annotations

import json
import random
import re
from fractions import Fraction

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
    if kind == "range":  # bounds the regex compiler ignores: enforced by engine_backend.json_numbers
        return random_bounds(rng, rng.choice(["integer", "number"]))
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


def random_bounds(rng: random.Random, kind: str) -> dict:
    """An integer or number schema with random bounds: one- or two-sided, inclusive or exclusive, integers or
    decimals as bounds, small or large, negative or not (always some value within them)."""
    def value():
        scale = 10 ** rng.choice([0, 0, 1, 2, 3, 6, 12] + ([17] if kind == "integer" else []))  # within the caps
        v = rng.uniform(-1, 1) * scale
        return rng.choice([round(v), round(v, rng.randint(1, 4))])

    low, high = sorted([value(), value()])
    if high - low < 2:
        high = low + 2
    schema = {"type": kind}
    side = rng.choice(["both", "both", "low", "high"])
    if side != "high":
        schema[rng.choice(["minimum", "exclusiveMinimum"])] = low
    if side != "low":
        schema[rng.choice(["maximum", "exclusiveMaximum"])] = high
    return schema


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
    {"type": "integer", "minimum": 3},
    {"type": "integer", "exclusiveMaximum": -3},
    {"type": "integer", "minimum": 0, "maximum": 100000},
    {"type": "number", "minimum": 0, "maximum": 1},
    {"type": "number", "exclusiveMinimum": 0},
    {"type": "number", "minimum": -2.5, "exclusiveMaximum": 0.25},
    {"type": ["integer", "null"], "minimum": 0, "maximum": 3},
    {"type": ["number", "string"], "exclusiveMaximum": -1, "maxLength": 2},
    {"$schema": "http://json-schema.org/draft-04/schema#", "type": "integer", "minimum": 0, "maximum": 3,
     "exclusiveMaximum": True},
    {"enum": [1, 5, "x", 2.5], "maximum": 2},
    {"type": "array", "items": {"type": "number", "minimum": 0}, "maxItems": 3},
    {"type": "object", "properties": {"__llm_sql_number_0__": {"type": "integer", "minimum": 7, "maximum": 9}},
     "required": ["__llm_sql_number_0__"]},
], ids=["escaped-names", "exclusive-bounds", "multipleOf", "multipleOf-float", "digit-counts", "unique-one",
        "properties-count", "only-subschemas", "one-sided", "one-sided-exclusive", "large-range", "number-range",
        "number-positive", "number-negative", "type-list", "type-list-number", "draft4-exclusive", "enum-bounds",
        "number-items", "placeholder-text"])
def test_schemas_the_compiler_only_half_enforces_now_validate(tokenizer, schema):
    """Found by the openai-client schema test's probing: property names were written unescaped ('say "hi"' gave
    invalid JSON), exclusive bounds and multipleOf were ignored, outlines' digit counts allowed "1." and "1e+", and
    an enum value shaped like an integer range was rewritten as if it were a schema; now the outputs validate."""
    constraint = compile_constraint(tokenizer, tokenizer.vocab_size, json_schema=schema)
    for seed in range(40):
        jsonschema.validate(json.loads(walk(constraint, tokenizer, seed)), schema)


@pytest.mark.parametrize("schema,needle", [
    ({"type": "integer", "minimum": 3, "multipleOf": 3}, "at most 1000"),
    ({"type": "integer", "minimum": 0, "maximum": 100000, "multipleOf": 3}, "at most 1000"),
    ({"type": "integer", "minimum": 1, "maximum": 5, "multipleOf": 7}, "no integer"),
    ({"type": "integer", "minimum": 5, "maximum": 3}, "no integer"),
    ({"type": "integer", "exclusiveMinimum": 3, "exclusiveMaximum": 4}, "no integer"),
    ({"type": "integer", "minimum": 1e19}, "no integer of at most 18 digits"),
    ({"type": "number", "exclusiveMinimum": 1, "exclusiveMaximum": 1}, "no number"),
    ({"type": "number", "minimum": 1e15}, "no number"),
    ({"type": "number", "multipleOf": 0.5}, "multipleOf on a number"),
    ({"type": "integer", "minimum": "3"}, "finite number"),
    ({"type": "number", "maximum": None}, "finite number"),
    ({"type": "integer", "multipleOf": 0}, "positive number"),
    ({"minimum": 0}, "numeric bounds are enforced on a schema of type"),
    ({"type": "integer", "anyOf": [{"type": "integer"}, {"type": "string"}], "minimum": 0}, "numeric bounds"),
    ({"type": "number", "maxDigitsFraction": 2, "minimum": 0}, "numeric bounds"),
    ({"enum": [1, 5], "minimum": 6}, "no value"),
    ({"type": "array", "items": {"type": "boolean"}, "maxItems": 3, "uniqueItems": True}, "uniqueItems"),
    ({"type": "array", "items": {"type": "integer"}, "contains": {"const": 1}}, "'contains'"),
    ({"type": "object", "required": ["a"]}, "does not declare"),
    ({"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["b"]}, "does not declare"),
    ({"type": "object", "properties": {"a": {"type": "boolean"}}, "minProperties": 1}, "minProperties"),
    ({"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"type": "boolean"}}, "maxProperties": 1},
     "maxProperties"),
    ({"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "multipleOf": 2}}, "required": ["a"]},
     "at most 1000"),
    ({"type": "object", "properties": {"a": {"type": "boolean"}}, "if": {"required": ["a"]}}, "'if'"),
])
def test_schemas_the_compiler_would_ignore_are_refused(tokenizer, schema, needle):
    """Each of these compiled to a regex whose outputs break the schema (a bound or keyword silently dropped): an
    output constraint is enforced or refused, never ignored."""
    with pytest.raises(ValueError, match="unsupported json_schema") as err:
        regex_for(json_schema=schema)
    assert needle in str(err.value)


# --- numeric bounds (engine_backend.json_numbers) --------------------------------------------------------------

def _meets(text: str, schema: dict) -> bool:
    """Whether a JSON number meets the schema's bounds compared directly, both as the exact decimal against the bound
    as written and as the double a validator parses it to (draft 4's boolean exclusive form included)."""
    exact, parsed = Fraction(text), json.loads(text)
    for key, sign in (("minimum", 1), ("maximum", -1), ("exclusiveMinimum", 1), ("exclusiveMaximum", -1)):
        bound = schema.get(key)
        if bound is None or isinstance(bound, bool):
            continue
        strict = key.startswith("exclusive") or schema.get("exclusive" + key[:1].upper() + key[1:]) is True
        written = Fraction(repr(bound)) if isinstance(bound, float) else Fraction(bound)
        for value, limit in ((exact, written), (parsed, bound)):  # compared, not subtracted (int - float rounds)
            if (value < limit if sign > 0 else value > limit) or (strict and value == limit):
                return False
    return True


def _number_texts(rng: random.Random, schema: dict) -> list[str]:
    """JSON numbers (no exponent) to try against a schema: near each bound (a step of 10**-k either side, and the
    bound itself with trailing zeros), and random ones of every length up to past the caps."""
    texts = []
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        bound = schema.get(key)
        if bound is None or isinstance(bound, bool):
            continue
        written = Fraction(repr(bound)) if isinstance(bound, float) else Fraction(bound)
        for k in list(range(0, 17)) + [rng.randint(1, 16)]:
            for value in (written - Fraction(1, 10 ** k), written, written + Fraction(1, 10 ** k)):
                texts.append(_decimal_text(value, k + rng.randint(0, 2)))
    for _ in range(150):
        whole = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 19))).lstrip("0") or "0"
        text = rng.choice(["", "-"]) + whole
        if schema["type"] == "number" and rng.random() < 0.7:
            text += "." + "".join(rng.choice("09" if rng.random() < 0.3 else "0123456789")
                                  for _ in range(rng.randint(1, 17)))
        texts.append(text)
    return texts


def _decimal_text(value: Fraction, places: int) -> str:
    """value rounded towards zero to `places` digits after the point, written as JSON (no "-" on a zero)."""
    scaled = abs(value) * 10 ** places
    digits = str(scaled.numerator // scaled.denominator).zfill(places + 1)
    text = digits[:-places] + "." + digits[-places:] if places else digits
    return ("-" if value < 0 and int(digits) else "") + text


def test_integer_bounds_accept_exactly_the_integers_within_them():
    """Random bounds (one- or two-sided, inclusive or exclusive, integer or decimal bounds, up to 10**17): the regex
    accepts exactly the JSON integers of at most 18 digits that meet them, near the bounds and far from them."""
    rng = random.Random(7)
    for case in range(300):
        schema = random_bounds(rng, "integer")
        pattern = re.compile(regex_for(json_schema=schema))
        values = [int(v) for v in _number_texts(rng, schema) if "." not in v]
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if key in schema:
                values += range(int(schema[key]) - 30, int(schema[key]) + 30)
        for value in values:
            want = _meets(str(value), schema) and len(str(abs(value))) <= 18
            assert bool(pattern.fullmatch(str(value))) == want, (schema, value)
        for bad in ("-0", "00", "01", "+1", "1.0", "1e2", "", "-"):
            assert not pattern.fullmatch(bad), (schema, bad)


def test_number_bounds_accept_exactly_the_decimals_within_them():
    """Random bounds as above: the regex accepts exactly the decimals of at most 15 digits before and 15 after the
    point that meet them exactly and as doubles (so a validator accepts every one), and no other text."""
    rng = random.Random(11)
    for case in range(300):
        schema = random_bounds(rng, "number")
        pattern = re.compile(regex_for(json_schema=schema))
        for text in _number_texts(rng, schema):
            whole, _, fraction = text.lstrip("-").partition(".")
            want = _meets(text, schema) and len(whole) <= 15 and len(fraction) <= 15
            if text.startswith("-") and Fraction(text) == 0:  # "-0" only where negative numbers are allowed
                want = want and _meets("-0.000000000000001", schema)
            assert bool(pattern.fullmatch(text)) == want, (schema, text)
        for bad in ("01", "+1", "1.", ".5", "1e2", "1E-2", "", "-", "00.5"):
            assert not pattern.fullmatch(bad), (schema, bad)


@pytest.mark.parametrize("schema,good,bad", [
    ({"type": "number", "minimum": 0, "maximum": 1}, ["0", "1", "1.0", "0.5", "1.000000000000000"],
     ["1.5", "1.000000000000001", "-0.1", "2", "10", "-0", "-0.0"]),
    ({"type": "number", "minimum": 0, "exclusiveMaximum": 1}, ["0", "0.999", "0.999999999999999"],
     ["1", "1.0", "1.00", "-0.5"]),
    ({"type": "number", "exclusiveMinimum": 0}, ["0.000000000000001", "5", "12.99", "999999999999999"],
     ["0", "0.0", "-0", "-0.0", "-1", "0.0000000000000001", "1000000000000000"]),
    ({"type": "number", "exclusiveMaximum": 32}, ["31.99999999999999", "-5"],
     ["31.999999999999999", "32", "32.0"]),  # 31.999999999999999 parses to 32.0
    ({"type": "number", "minimum": 0.1, "maximum": 0.3}, ["0.1", "0.3", "0.2999", "0.10"], ["0.09999", "0.30001"]),
    ({"type": "number", "minimum": 1900, "maximum": 2100}, ["1900", "2100", "2100.0", "1999.5"],
     ["2100.5", "1899.99", "210"]),
    ({"type": "number", "minimum": -273.15}, ["-273.15", "-273.150", "-0.5", "0", "-0", "-0.0", "1"],
     ["-273.151", "-274", "1e2"]),
    ({"type": "number"}, ["0", "-0.5", "123456789012345.123456789012345"],
     ["1e5", "1234567890123456", "0.1234567890123456", "1.", ".5"]),
    ({"type": "integer", "minimum": 0}, ["0", "7", "999999999999999999"], ["-1", "-0", "1000000000000000000", "1.0"]),
    ({"type": "integer", "maximum": -3}, ["-3", "-999999999999999999"], ["-2", "0", "3"]),
    ({"type": "integer", "exclusiveMinimum": 2.5, "exclusiveMaximum": 7}, ["3", "6"], ["2", "7", "2.5"]),
    ({"type": "integer", "minimum": 1900, "maximum": 2100}, ["1900", "2024", "2100"], ["1899", "2101", "21000"]),
    ({"type": "integer"}, ["0", "-1", "999999999999999999", "-999999999999999999"],
     ["-0", "1000000000000000000", "01"]),
    ({"type": "integer", "minimum": 0, "maximum": 3, "exclusiveMaximum": True}, ["0", "2"], ["3", "-1"]),
], ids=["unit", "below-1", "positive", "below-32", "tenths", "years", "above-absolute-zero", "free-number",
        "count", "at-most-minus-3", "exclusive-decimal-bounds", "year", "free-integer", "draft4"])
def test_numeric_bounds_at_the_boundaries(schema, good, bad):
    pattern = re.compile(regex_for(json_schema=schema))
    assert [t for t in good if not pattern.fullmatch(t)] == []
    assert [t for t in bad if pattern.fullmatch(t)] == []


NUMERIC_SCHEMA = {"type": "object", "properties": {
    "count": {"type": "integer", "minimum": 0},
    "price": {"type": "number", "exclusiveMinimum": 0},
    "probability": {"type": "number", "minimum": 0, "maximum": 1},
    "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
    "temperature": {"type": "number", "minimum": -50.5, "exclusiveMaximum": 60},
    "rank": {"type": ["integer", "null"], "exclusiveMinimum": 0, "maximum": 10},
}, "required": ["count", "price", "probability", "year", "temperature", "rank"], "additionalProperties": False}


def test_engine_generates_numbers_within_their_bounds(tiny_model_dir):
    """The tiny random model through the engine, greedy and sampled: every answer finishes by itself within a token
    budget (digits are capped) and validates."""
    from engine_backend import LLMEngine, SamplingParams

    engine = LLMEngine(model=str(tiny_model_dir("llama")))
    prompts = [engine.tokenizer.encode(f"Extract the numbers of listing {i} as JSON:") for i in range(6)]
    params = [SamplingParams(max_tokens=200, json_schema=NUMERIC_SCHEMA, temperature=1.0 if i > 1 else 0.0, seed=i)
              for i in range(len(prompts))]  # one batch: two greedy, four sampled
    outs = engine.generate(prompts, params)
    for out in outs:
        assert out.finish_reason == "stop", out.text
        jsonschema.validate(json.loads(out.text), NUMERIC_SCHEMA)
    assert len({out.text for out in outs}) == len(outs)

"""Prompt layout, value rendering, presets, truncation, options and labels validation (no model needed)."""
from __future__ import annotations

import datetime as dt
import decimal

import pytest

from udf.api import LLMCall
from udf.functions import make_call, parse_output, sampling_params, validate_labels
from udf.options import OPTION_NAMES, merge_options, validate_options
from udf.presets import PRESET_NAMES, PRESETS, expand
from udf.prompts import CUES, DEFAULT_SYSTEM, make_prompt, render_value


def test_layout_instruction_first_then_fields_then_cue():
    p = make_prompt("llm", "Translate to French", [("review", "good beer"), ("stars", 5)])
    assert p.startswith(DEFAULT_SYSTEM)
    i_task = p.index("Task: Translate to French")
    i_review = p.index('"review": "good beer"\n')
    i_stars = p.index('"stars": 5\n')
    assert i_task < i_review < i_stars
    assert p.endswith("\nAnswer:")
    # the instruction part is a shared prefix whatever the values
    q = make_prompt("llm", "Translate to French", [("review", "bad"), ("stars", 1)])
    head = p[:i_review]
    assert q.startswith(head)


@pytest.mark.parametrize("function,cue", list(CUES.items()))
def test_cue_per_function(function, cue):
    instr = None if function == "llm_classify" else "Is it good?"
    p = make_prompt(function, instr, [("x", 1)], labels=["a", "b"] if function == "llm_classify" else None)
    assert p.endswith(cue)
    if function == "llm_classify":
        assert 'Labels: "a", "b"\n' in p


def test_field_order_is_respected():
    p = make_prompt("llm", "x", [("b", 2), ("a", 1)])
    assert p.index('"b": 2') < p.index('"a": 1')


def test_value_rendering():
    assert render_value(None) == "null"
    assert render_value(True) == "true" and render_value(False) == "false"
    assert render_value(42) == "42"
    assert render_value(0.1) == "0.1"
    assert render_value(float("nan")) == "NaN" and render_value(float("-inf")) == "-Infinity"
    assert render_value(decimal.Decimal("2.50")) == "2.50"
    assert render_value(dt.date(2024, 5, 1)) == '"2024-05-01"'
    assert render_value(dt.datetime(2024, 5, 1, 12, 30)) == '"2024-05-01T12:30:00"'
    assert render_value("a \"q\"\nline") == '"a \\"q\\"\\nline"'
    assert render_value("héllo") == '"héllo"'
    assert render_value(b"ok\xff") == '"ok\ufffd"'  # non-UTF-8 bytes: errors="replace"
    assert render_value([1, None, "x"]) == '[1, null, "x"]'
    assert render_value({"k": 1}) == '{"k": 1}'


def test_null_field_rendered_as_null():
    p = make_prompt("llm_filter", "ok?", [("a", None), ("b", "x")])
    assert '"a": null\n' in p


def test_truncation_rule():
    long = "x" * 100
    assert render_value(long, 40) == '"' + "x" * 40 + ' ...[truncated 60 chars]"'
    assert render_value("x" * 40, 40) == '"' + "x" * 40 + '"'
    p = make_prompt("llm", "x", [("a", "y" * 5000)])  # default max_field_chars = 4000
    assert "...[truncated 1000 chars]" in p


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_presets_expand(name):
    for function in ("llm", "llm_filter", "llm_score", "llm_classify"):
        assert expand(function, name) == PRESETS[name][function]
        assert expand(function, f"  {name.upper()} ") == PRESETS[name][function]
    p = make_prompt("llm_filter", name, [("r", "x")])
    assert f"Task: {PRESETS[name]['llm_filter']}\n" in p


def test_non_preset_instruction_kept():
    assert expand("llm", "sentiment of the review please") == "sentiment of the review please"
    assert expand("llm_classify", None) == PRESETS["classify"]["llm_classify"]


def test_presets_documented():
    import udf.presets as presets

    for name in PRESET_NAMES:
        assert f"``{name}``" in presets.__doc__


def test_options_validation():
    assert validate_options({"temperature": 0, "max_tokens": 8}) == (("max_tokens", 8), ("temperature", 0.0))
    assert validate_options({"max_tokens": 8.0}) == (("max_tokens", 8),)
    assert validate_options(None) == ()
    assert validate_options({"max_tokens": None}) == ()  # NULL struct member = not set
    with pytest.raises(ValueError, match="unknown option 'max_token'.*allowed options: .*max_tokens"):
        validate_options({"max_token": 8})
    with pytest.raises(ValueError, match="'max_tokens' must be a positive integer"):
        validate_options({"max_tokens": "8"})
    with pytest.raises(ValueError, match="'max_tokens' must be a positive integer"):
        validate_options({"max_tokens": 0})
    with pytest.raises(ValueError, match="'temperature'"):
        validate_options({"temperature": -1})
    with pytest.raises(ValueError, match="'max_tokens'.*boolean"):
        validate_options({"max_tokens": True})
    with pytest.raises(ValueError, match="'model'"):
        validate_options({"model": 3})
    with pytest.raises(ValueError, match="unknown session option 'foo'"):
        merge_options({"foo": 1})
    assert set(OPTION_NAMES) >= {"max_tokens", "temperature", "model"}


def test_call_options_override_session_defaults():
    assert merge_options({"max_tokens": 4, "temperature": 0.5}, (("max_tokens", 8),)) == {
        "max_tokens": 8, "temperature": 0.5}


def test_labels_validation():
    assert validate_labels(["a", "b"]) == ("a", "b")
    for bad, msg in [([], "empty"), (["a", ""], "empty label"), (["a", "  "], "empty label"),
                     (["a", "a"], "duplicates"), (None, "needs labels"), ("ab", "list of strings"),
                     (["a", 3], "strings")]:
        with pytest.raises(ValueError, match=msg):
            validate_labels(bad)
    with pytest.raises(ValueError, match="duplicates"):
        make_call("llm_classify", None, ("x",), ["p", "p"])


def test_make_call_errors():
    with pytest.raises(ValueError, match="instruction"):
        make_call("llm", None, ("x",))
    with pytest.raises(ValueError, match="at least one field"):
        make_call("llm_classify", None, (), ["a", "b"])
    assert make_call("llm", "Say hi", ()).field_names == ()  # an instruction alone is a valid prompt
    with pytest.raises(ValueError, match="unknown LLM function"):
        make_call("llm_foo", "hi", ("x",))
    with pytest.raises(ValueError, match="unknown option"):
        make_call("llm", "hi", ("x",), options={"bogus": 1})


def test_sampling_params_per_function():
    f = make_call("llm_filter", "ok?", ("x",))
    sp = sampling_params(f, {})
    assert sp.choices == [" yes", " no"] and sp.temperature == 0.0
    s = sampling_params(make_call("llm_score", "ok?", ("x",)), {})
    assert [c.strip() for c in s.choices] == ["1", "2", "3", "4", "5"]
    c = sampling_params(make_call("llm_classify", None, ("x",), ["pos", "neg"]), {"max_tokens": 1})
    assert c.choices == [" pos", " neg"] and c.max_tokens >= len(" pos")
    t = sampling_params(make_call("llm", "hi", ("x",)), {"max_tokens": 7, "temperature": 0.3, "seed": 1})
    assert t.max_tokens == 7 and t.temperature == 0.3 and t.choices is None
    assert sampling_params(make_call("llm", "hi", ("x",)), {}).max_tokens == 32


def test_parse_output():
    f = LLMCall("llm_filter", "x", None, ("a",))
    assert parse_output(f, " yes") == (True, None)
    assert parse_output(f, " no") == (False, None)
    assert parse_output(f, "Yes.") == (True, None)
    v, err = parse_output(f, "maybe")
    assert v is None and "unparsable" in err
    s = LLMCall("llm_score", "x", None, ("a",))
    assert parse_output(s, " 4") == (4, None)
    assert parse_output(s, " 9")[0] is None
    c = LLMCall("llm_classify", None, ("pos", "neg"), ("a",))
    assert parse_output(c, " neg") == ("neg", None)
    assert parse_output(LLMCall("llm", "x", None, ("a",)), "  text \n") == ("text", None)

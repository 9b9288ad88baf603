"""udf.batch.evaluate against the real embedded engine on a tiny random checkpoint.

A random model answers nonsense: these tests assert mechanisms (dedup, ordering, caching, NULLs,
errors) and equalities between runs, never particular answers.
"""
from __future__ import annotations

import itertools

import pytest

from engine_backend.backends import GenerationResult
from llm_sql.cache import ResultCache, cache_key
from udf.api import EvalSettings
from udf.batch import _cache_key, evaluate
from udf.functions import make_call
from udf.prompts import render_value

REVIEWS = [
    ("Great beer, lovely amber color", 5, "ale"),
    ("Too bitter, thin finish", 2, "ipa"),
    ("Great beer, lovely amber color", 5, "ale"),  # duplicate of row 0
    (None, None, None),  # all NULL
    ("Skunky and stale", 1, "lager"),
    ("Too bitter, thin finish", 2, "ipa"),  # duplicate of row 1
    ("Crisp and clean", None, "lager"),
    ("Great beer, lovely amber color", 4, "ale"),
    ("Sour and funky", 4, None),
    ("Skunky and stale", 1, "lager"),
]
NAMES = ("review", "stars", "style")


class Recorder:
    """Wraps a backend and records each generate() call's prompts (the order they were sent)."""

    name = "recorder"

    def __init__(self, inner, fail_if=None, replace_text=None):
        self.inner, self.calls = inner, []
        self.fail_if, self.replace_text = fail_if, replace_text

    def generate(self, requests, progress=False):
        self.calls.append([r.prompt for r in requests])
        results = self.inner.generate(requests, progress=progress)
        out = []
        for req, res in zip(requests, results):
            if self.fail_if and self.fail_if(req.prompt):
                res = GenerationResult.failed("injected failure", prompt_tokens=3)
            elif self.replace_text is not None:
                res = GenerationResult(self.replace_text, [], "stop", None, 1, 0, 1)
            out.append(res)
        return out


def _settings(**kw):
    kw.setdefault("progress", False)
    return EvalSettings(**kw)


def _run(call, rows, backend, tmp_path=None, **kw):
    cache = ResultCache(tmp_path / "c.sqlite") if tmp_path is not None else None
    return evaluate(call, rows, backend, settings=_settings(**kw), result_cache=cache, model_id="tiny")


@pytest.mark.parametrize("function", ["llm_filter", "llm", "llm_score", "llm_classify"])
def test_same_values_with_every_switch(backend, tmp_path, function):
    """Dedup, reordering and the result cache never change a value (greedy decoding)."""
    labels = ["positive", "negative", "neutral"] if function == "llm_classify" else None
    instr = None if function == "llm_classify" else "sentiment"
    call = make_call(function, instr, NAMES, labels, {"max_tokens": 6, "reorder_fields": False})
    reference = None
    for i, (dedup, reorder, cache) in enumerate(itertools.product([True, False], repeat=3)):
        d = tmp_path / f"run{i}"
        d.mkdir()
        out = _run(call, REVIEWS, backend, d if cache else None, dedup=dedup, reorder=reorder, result_cache=cache)
        assert all(e is None for e in out.errors), out.errors
        if reference is None:
            reference = out.values
        assert out.values == reference, (dedup, reorder, cache)
        if cache:  # second run: everything from the result cache, same values
            again = _run(call, REVIEWS, backend, d, dedup=dedup, reorder=reorder)
            assert again.values == reference
            assert again.stats.llm_calls == 0 and again.stats.cache_hits == out.stats.llm_calls
    assert reference[3] is None


def test_single_field_reorder_identical(backend):
    call = make_call("llm_filter", "Is the review positive?", ("review",))
    rows = [(r[0],) for r in REVIEWS]
    a = _run(call, rows, backend, reorder=True)
    b = _run(call, rows, backend, reorder=False, dedup=False)
    assert a.values == b.values


def test_field_reordering_keeps_dedup_and_cache_equalities(backend, tmp_path):
    call = make_call("llm_score", "sentiment", NAMES)  # fields may be reordered by the optimiser
    a = _run(call, REVIEWS, backend, tmp_path, reorder=True, dedup=True)
    b = _run(call, REVIEWS, backend, None, reorder=True, dedup=False, result_cache=False)
    c = _run(call, REVIEWS, backend, tmp_path, reorder=True)  # from the cache
    assert a.values == b.values == c.values
    assert c.stats.llm_calls == 0
    assert set(a.stats.field_order) == set(NAMES)


def test_result_types(backend):
    rows = [(r[0],) for r in REVIEWS]
    f = _run(make_call("llm_filter", "sentiment", ("review",)), rows, backend)
    assert all(isinstance(v, bool) for i, v in enumerate(f.values) if i != 3)
    labels = ["positive", "negative"]
    c = _run(make_call("llm_classify", None, ("review",), labels), rows, backend)
    assert all(v in labels for i, v in enumerate(c.values) if i != 3)
    s = _run(make_call("llm_score", "sentiment", ("review",)), rows, backend)
    assert all(isinstance(v, int) and 1 <= v <= 5 for i, v in enumerate(s.values) if i != 3)
    t = _run(make_call("llm", "summarize", ("review",), options={"max_tokens": 4}), rows, backend)
    assert all(isinstance(v, str) for i, v in enumerate(t.values) if i != 3)
    assert [f.values[3], c.values[3], s.values[3], t.values[3]] == [None] * 4


def test_dedup_reduces_calls_and_batch_is_one_ordered_list(backend):
    call = make_call("llm_filter", "sentiment", NAMES)
    rec = Recorder(backend)
    out = _run(call, REVIEWS, rec)
    distinct = len({r for r in REVIEWS if any(v is not None for v in r)})
    assert out.stats.rows_in == len(REVIEWS)
    assert out.stats.null_inputs == 1
    assert out.stats.distinct_inputs == distinct
    assert out.stats.llm_calls == distinct and len(rec.calls) == 1 and len(rec.calls[0]) == distinct
    assert out.stats.prompt_tokens > 0 and out.stats.generated_tokens >= distinct
    rec2 = Recorder(backend)
    nodedup = _run(call, REVIEWS, rec2, dedup=False, reorder=False)
    assert nodedup.stats.llm_calls == len(REVIEWS) - 1 and len(rec2.calls) == 1
    assert nodedup.values == _run(make_call("llm_filter", "sentiment", NAMES, options={"reorder_fields": False}),
                                  REVIEWS, backend, dedup=False, reorder=False).values


def test_reorder_sends_plan_order(backend):
    import optimizer
    import pandas as pd

    call = make_call("llm_filter", "sentiment", NAMES, options={"reorder_fields": True})
    rec = Recorder(backend)
    _run(call, REVIEWS, rec, reorder=True)
    sent = rec.calls[0]
    # the plan over the distinct rendered tuples, as evaluate makes it
    rows = list(dict.fromkeys(tuple(render_value(v) for v in r) for r in REVIEWS if any(v is not None for v in r)))
    plan = optimizer.reorder(pd.DataFrame(rows, columns=list(NAMES), dtype=object), method="fast")
    for prompt, g, fields in zip(sent, plan.order, plan.fields):
        expected = "".join(f'"{name}": {rows[g][NAMES.index(name)]}\n' for name in fields)
        assert expected in prompt
    # with reorder off: first-occurrence order, fields as written
    rec_off = Recorder(backend)
    _run(call, REVIEWS, rec_off, reorder=False)
    assert '"review": "Great beer, lovely amber color"\n"stars": 5\n' in rec_off.calls[0][0]
    assert '"review": "Too bitter, thin finish"' in rec_off.calls[0][1]


def test_all_null_rows_make_no_call(backend):
    rec = Recorder(backend)
    call = make_call("llm", "summarize", ("a", "b"))
    out = _run(call, [(None, None), (None, None)], rec)
    assert out.values == [None, None] and out.errors == [None, None]
    assert out.stats.null_inputs == 2 and out.stats.llm_calls == 0 and rec.calls == []
    empty = _run(call, [], rec)
    assert empty.values == [] and empty.stats.rows_in == 0


def test_prompt_over_context_is_null_with_reason(backend):
    call = make_call("llm_filter", "sentiment", ("review",), options={"max_field_chars": 100_000})
    rows = [("short and fine",), ("word " * 6000,), ("short and fine",)]
    out = _run(call, rows, backend)
    assert out.values[1] is None and "context" in out.errors[1]
    assert isinstance(out.values[0], bool) and out.values[0] == out.values[2]
    assert out.errors[0] is None and out.stats.errors == 1
    with pytest.raises(RuntimeError, match="context"):
        _run(call, rows, backend, on_error="raise")


def test_failures_are_null_and_never_cached(backend, tmp_path):
    call = make_call("llm_filter", "sentiment", ("review",))
    rows = [("good",), ("bad",), ("good",)]
    rec = Recorder(backend, fail_if=lambda p: '"bad"' in p)
    cache = ResultCache(tmp_path / "c.sqlite")
    out = evaluate(call, rows, rec, settings=_settings(), result_cache=cache, model_id="m")
    assert out.values[1] is None and "injected failure" in out.errors[1]
    assert out.values[0] is not None and out.values[0] == out.values[2]
    assert len(cache) == 1  # only the success
    again = evaluate(call, rows, Recorder(backend), settings=_settings(), result_cache=cache, model_id="m")
    assert again.stats.cache_hits == 1 and again.stats.llm_calls == 1 and again.values[1] is not None
    # a different model identity never reads another's answers
    other = evaluate(call, rows, Recorder(backend), settings=_settings(), result_cache=cache, model_id="other")
    assert other.stats.cache_hits == 0


def test_unparsable_output_is_error(backend):
    call = make_call("llm_score", "sentiment", ("review",))
    rec = Recorder(backend, replace_text="banana")
    out = _run(call, [("x",), ("y",)], rec)
    assert out.values == [None, None] and all("unparsable" in e for e in out.errors)
    with pytest.raises(RuntimeError, match="unparsable"):
        _run(call, [("x",)], rec, on_error="raise")


def test_bad_inputs_raise(backend):
    call = make_call("llm", "hi", ("a", "b"))
    with pytest.raises(ValueError, match="2 fields"):
        _run(call, [("only one",)], backend)
    with pytest.raises(ValueError, match="on_error"):
        _run(call, [("a", "b")], backend, on_error="ignore")
    with pytest.raises(ValueError, match="unknown session option"):
        _run(call, [("a", "b")], backend, defaults={"max_tokenz": 3})


def test_session_defaults_apply(backend):
    rec = Recorder(backend)
    call = make_call("llm", "hi", ("a",))
    out = evaluate(call, [("x",)], rec, settings=_settings(defaults={"max_tokens": 2, "system": "SYS"}))
    assert out.stats.generated_tokens <= 2 and rec.calls[0][0].startswith("SYS\n\nTask: hi")


def test_cache_key_matches_llm_sql_cache():
    assert _cache_key("m", {"a": 1, "b": [1, 2]}, "p") == cache_key("m", {"b": [1, 2], "a": 1}, "p")


def test_model_identity_defaults_to_the_backend(backend, tmp_path):
    from udf.batch import backend_model_id

    ident = backend_model_id(backend)
    assert ident.startswith("embedded:") and str(backend.engine.model_path) in ident
    call = make_call("llm_filter", "sentiment", ("review",))
    cache = ResultCache(tmp_path / "c.sqlite")
    evaluate(call, [("x",)], backend, settings=_settings(), result_cache=cache)
    assert len(cache) == 1
    again = evaluate(call, [("x",)], backend, settings=_settings(), result_cache=cache,
                     model_id=backend_model_id(backend))
    assert again.stats.cache_hits == 1


def test_reordering_raises_engine_prefix_hits(backend):
    """Interleaved rows whose long field repeats: the optimiser puts that field first and groups the rows."""
    descs = ["The beer pours a deep amber color with a thick off-white head that lingers for a long time.",
             "This stout is black as night with a tan head. Notes of roasted coffee and dark chocolate.",
             "Hazy golden color, huge tropical fruit aroma: mango, passion fruit, pineapple. Soft mouthfeel."]
    rows = [(f"user{i}", descs[i % 3]) for i in range(24)]
    call = make_call("llm_filter", "Is the beer good?", ("user", "description"), options={"reorder_fields": True})
    cached = {}
    for reorder in (False, True):
        backend.engine.reset_prefix_cache()
        out = _run(call, rows, backend, reorder=reorder)
        cached[reorder] = out.stats.cached_prompt_tokens
        assert out.stats.prompt_tokens > 0
    assert cached[True] > cached[False]
    assert out.stats.field_order == ("description", "user")


def test_unseeded_sampling_bypasses_result_cache(backend, tmp_path):
    cache = ResultCache(tmp_path / "c.sqlite")
    sampled = make_call("llm", "hi", ("a",), options={"temperature": 0.8, "max_tokens": 2})
    evaluate(sampled, [("x",)], backend, settings=_settings(), result_cache=cache)
    assert len(cache) == 0
    seeded = make_call("llm", "hi", ("a",), options={"temperature": 0.8, "max_tokens": 2, "seed": 7})
    first = evaluate(seeded, [("x",)], backend, settings=_settings(), result_cache=cache)
    second = evaluate(seeded, [("x",)], backend, settings=_settings(), result_cache=cache)
    assert len(cache) == 1 and second.stats.cache_hits == 1 and first.values == second.values


def test_default_keeps_the_written_field_order(backend):
    """Field reordering rewords prompts, so by default only rows move: values equal the plain evaluation."""
    rows = [(f"user{i % 5}", ["amber", "stout", "hazy"][i % 3]) for i in range(15)]
    call = make_call("llm_filter", "Is the beer good?", ("user", "style"))
    rec = Recorder(backend)
    out = _run(call, rows, rec, reorder=True)
    sent = rec.calls[0]
    assert all(p.index('"user":') < p.index('"style":') for p in sent)
    assert sent == sorted(sent)  # rows sorted by their values: neighbours share the longest prefixes
    plain = _run(call, rows, backend, reorder=False, dedup=False)
    assert out.values == plain.values

"""The reasoning router and model cascades (udf.routing) through DuckDB on real tiny checkpoints: every row's value
is exactly what the model (and mode) that answered it gives alone, the SQL value never holds reasoning, the
calibrated threshold's guarantee holds, and the statistics and the plan say where rows went."""
from __future__ import annotations

import random

import duckdb
import pytest

import llm_sql
from udf.api import EvalSettings
from udf.batch import evaluate
from udf.functions import make_call
from udf.routing import _tail, calibrate, clopper_pearson_lower

REVIEWS = [f"Review {i}: " + w for i, w in enumerate(
    ["crisp and clean", "flat", "skunky and stale", "lovely coffee notes", "too sweet", "juicy hops", "thin",
     "rich caramel", "sour", "balanced", "watery", "smoky", "bright citrus", "cardboard", "creamy head", "harsh"])]
COMMON = dict(cache=False, progress=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from engine_backend.testing import make_tiny_model

    root = tmp_path_factory.mktemp("routing")
    return {"small": str(make_tiny_model(root / "small", arch="llama", seed=3, hidden_size=32)),
            "large": str(make_tiny_model(root / "large", arch="qwen3", seed=4))}


@pytest.fixture()
def db(models):
    con = duckdb.connect()
    con.execute("CREATE TABLE t (id INTEGER, review VARCHAR)")
    con.executemany("INSERT INTO t VALUES (?, ?)", list(enumerate(REVIEWS + [None, REVIEWS[0]])))
    yield llm_sql.register(con, models=models, model="large", **COMMON)
    con.close()


def query(db, options: str, function: str = "llm_filter('Is the beer good?', review") -> list:
    return db.sql(f"SELECT id, {function}, {options}) FROM t ORDER BY id").fetchall()


def alone(db, model: str, mode: str = "off", function: str = "llm_filter", instruction="Is the beer good?"):
    """Each row's value and confidence from one model and mode, through the same batch path."""
    session = db.session
    call = make_call(function, instruction, ["review"], None, {"model": model, "reasoning": mode,
                                                               "max_reasoning_tokens": 6})
    rows = [(r,) for r in REVIEWS + [None, REVIEWS[0]]]
    out = evaluate(call, rows, session.route(model).backend, settings=EvalSettings(result_cache=False, progress=False),
                   confidence=mode == "off")
    return out.values, out.confidence


def test_cascade_answers_equal_the_answering_model_alone(db):
    small, conf = alone(db, "small")
    large, _ = alone(db, "large")
    threshold = sorted(c for c in conf if c is not None)[len(REVIEWS) // 2]  # about half the rows go on
    got = [v for _, v in query(db, f"{{'model': ['small', 'large'], 'cascade_threshold': {threshold}}}")]
    expected = [None if c is None and s is None else (s if c >= threshold else g)
                for s, g, c in zip(small, large, conf)]
    assert got == expected
    stats = llm_sql.last_stats(db.con)
    # a lifted stage answers distinct inputs (the duplicate review is asked once)
    by_small = sum(1 for c in conf[:len(REVIEWS)] if c >= threshold)
    assert stats.rows_by_model == {"small": by_small, "large": len(REVIEWS) - by_small}
    assert 0 < by_small < len(REVIEWS) + 1
    assert query(db, f"{{'model': ['small', 'large'], 'cascade_threshold': {threshold}}}") == list(
        enumerate(got))  # deterministic


def test_router_reasons_only_on_unsure_rows_and_never_returns_the_reasoning(db):
    off, conf = alone(db, "large", "off")
    on, _ = alone(db, "large", "on")
    threshold = sorted(c for c in conf if c is not None)[len(REVIEWS) // 2]
    options = f"{{'reasoning': 'auto', 'reasoning_threshold': {threshold}, 'max_reasoning_tokens': 6}}"
    got = [v for _, v in query(db, options)]
    assert got == [None if c is None else (o if c >= threshold else r) for o, r, c in zip(off, on, conf)]
    stats = llm_sql.last_stats(db.con)
    unsure = sum(1 for c in conf if c is not None and c < threshold)
    assert stats.rows_reasoned == stats.rows_by_model["large+reasoning"] == unsure
    assert 0 < stats.reasoning_tokens <= 6 * unsure  # the budget bounds every row's thinking
    assert all(isinstance(v, bool) or v is None for v in got)  # a boolean, never reasoning text


def test_return_reasoning_is_a_struct_equal_optimised_and_plain(db, models):
    sql = ("SELECT id, llm('Describe the beer', review, {'reasoning': 'on', 'max_reasoning_tokens': 5, "
           "'max_tokens': 4, 'return_reasoning': true}) AS x FROM t ORDER BY id")
    rel = db.sql(sql)
    assert str(rel.types[1]).replace('"', "") == "STRUCT(answer VARCHAR, reasoning VARCHAR)"
    rows = rel.fetchall()
    plain = llm_sql.register(db.con, models=models, model="large", optimize=False, **COMMON).sql(sql).fetchall()
    assert rows == plain
    for _, x in rows:
        if x is not None:
            assert "</think>" not in x["answer"] and "<think>" not in x["reasoning"] and x["reasoning"]
    answers = db.sql(sql.replace(", 'return_reasoning': true", "")).fetchall()
    assert [a for _, a in answers] == [None if x is None else x["answer"] for _, x in rows]


def test_reasoning_on_a_model_without_it_is_a_clear_error(db):
    with pytest.raises(Exception, match="no reasoning mode"):
        query(db, "{'model': 'small', 'reasoning': 'on'}")


@pytest.mark.parametrize("options,needle", [
    ("{'reasoning': 'maybe'}", "reasoning"),
    ("{'model': ['small', 'small']}", "twice"),
    ("{'model': ['small', 'nope']}", "nope"),
    ("{'model': ['small', 'large'], 'reasoning': 'auto'}", "cascade"),
    ("{'model': ['small', 'large'], 'target_recall': 0.9}", None),
    ("{'target_precision': 0.9}", "two models"),
    ("{'reasoning_threshold': 0.5}", "auto"),
    ("{'model': ['small', 'large'], 'cascade_threshold': 2}", "cascade_threshold"),
])
def test_bad_routing_options(db, options, needle):
    if needle is None:  # target_recall is for llm_filter: fine here, refused for llm
        query(db, options)
        with pytest.raises(Exception, match="target_recall"):
            query(db, options, "llm('Describe', review")
        return
    with pytest.raises(Exception, match=needle):
        query(db, options)


def test_calibrated_cascade_reports_its_guarantee(db):
    options = "{'model': ['small', 'large'], 'target_precision': 0.6, 'calibration_sample': 12}"
    plan = llm_sql.explain(db.con, f"SELECT llm_filter('Is the beer good?', review, {options}) FROM t")
    assert plan.stages[0]["routing"]["kind"] == "calibrated cascade" and "probability >= 0.90" in str(plan)
    rows = query(db, options)
    stats = llm_sql.last_stats(db.con)
    routing = stats.stages[0]["routing"]
    assert routing["calibration_sample"] == 12 and "agree" in routing["guarantee"]
    assert sum(stats.rows_by_model.values()) == len(REVIEWS)  # distinct inputs
    small, conf = alone(db, "small")
    large, _ = alone(db, "large")
    tau = routing["threshold"]
    assert [v for _, v in rows] == [None if c is None else (s if c >= tau else g)
                                    for s, g, c in zip(small, large, conf)]


def test_clopper_pearson_lower_bound():
    assert clopper_pearson_lower(10, 10, 0.05) == pytest.approx(0.05 ** (1 / 10), abs=1e-6)
    assert clopper_pearson_lower(0, 10, 0.05) == 0.0
    assert clopper_pearson_lower(1, 20, 0.1) == pytest.approx(1 - 0.9 ** (1 / 20), abs=1e-6)  # P(X >= 1) = alpha
    lower = clopper_pearson_lower(50, 100, 0.05)
    assert _tail(50, 100, lower) == pytest.approx(0.05, abs=1e-6) and 0.40 < lower < 0.42


def test_calibration_guarantee_holds_in_simulation():
    """Proxies whose agreement with the oracle rises with confidence: over many samples, the population
    precision at the chosen threshold reaches the target at least 1 - delta of the time."""
    rng = random.Random(7)
    population = []
    for _ in range(20000):
        c = rng.random()
        population.append((c, rng.random() < 0.5 + 0.5 * c))  # (confidence, proxy agrees with the oracle)
    target, delta, failures, runs = 0.85, 0.1, 0, 200
    for _ in range(runs):
        sample = rng.sample(population, 300)
        tau, _ = calibrate([c for c, _ in sample], [a for _, a in sample], [True] * 300, target, "precision", delta)
        accepted = [a for c, a in population if c >= tau]
        if accepted and sum(accepted) / len(accepted) < target:
            failures += 1
    assert failures / runs <= delta


@pytest.fixture(scope="module")
def classifier(models, tmp_path_factory):
    """A tiny random BERT sequence classifier with a reasoning class, over the small model's vocabulary."""
    import shutil

    import torch
    import transformers

    path = tmp_path_factory.mktemp("router_classifier")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=600, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, num_labels=2, id2label={0: "direct", 1: "reasoning"},
                                     label2id={"direct": 0, "reasoning": 1})
    model = transformers.BertForSequenceClassification(config).eval()
    with torch.no_grad():  # BERT's own init (std 0.02) gives every row nearly one margin: spread them
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)
    shutil.copy(f"{models['small']}/tokenizer.json", path / "tokenizer.json")
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), pad_token="<pad>",
                                                     model_max_length=512)
    tokenizer.save_pretrained(path)
    # a random classifier's margins barely differ between rows: centre them so about half the rows need reasoning
    from udf.prompts import make_prompt

    texts = [make_prompt("llm_filter", "Is the beer good?", [("review", r)]) for r in REVIEWS]
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
        margin = (logits[:, 1] - logits[:, 0]).median()
        model.classifier.bias[1] -= margin
        model.classifier.bias[1] -= 1e-4  # the median row itself on the "direct" side
    model.save_pretrained(path)
    return str(path)


def test_a_classifier_can_decide_up_front(db, classifier):
    from udf.prompts import make_prompt
    from udf.routing import needs_reasoning

    off, _ = alone(db, "large", "off")
    on, _ = alone(db, "large", "on")
    texts = [make_prompt("llm_filter", "Is the beer good?", [("review", r)]) for r in REVIEWS + [REVIEWS[0]]]
    needs = needs_reasoning(classifier, texts)
    assert 0 < sum(needs) < len(needs)
    got = [v for _, v in query(db, f"{{'reasoning': 'auto', 'reasoning_classifier': '{classifier}', "
                                   "'max_reasoning_tokens': 6}")]
    expected = [r if n else o for o, r, n in zip(off[:16], on[:16], needs[:16])] + [None, on[0] if needs[0] else off[0]]
    assert got == expected
    stats = llm_sql.last_stats(db.con)
    assert stats.rows_reasoned == sum(needs[:16]) and stats.stages[0]["routing"]["decided_by"] == classifier


def test_return_reasoning_as_a_session_default_types_the_plain_path_too(db, models):
    """Set for the session, return_reasoning never appears in the SQL: the fallback UDFs must still be typed."""
    sql = "SELECT id, llm('Describe the beer', review) AS x FROM t WHERE id < 4 ORDER BY id"
    options = dict(models=models, model="large", reasoning="on", max_reasoning_tokens=4, max_tokens=3,
                   return_reasoning=True, **COMMON)
    results = []
    for optimize in (True, False):  # each registration replaces the last: read its answers first
        rel = llm_sql.register(db.con, optimize=optimize, **options).sql(sql)
        results.append((str(rel.types[1]).replace('"', ""), rel.fetchall()))
    (lifted_type, lifted), (plain_type, plain) = results
    assert lifted_type == plain_type == "STRUCT(answer VARCHAR, reasoning VARCHAR)"
    assert plain == lifted and all(x["reasoning"] for _, x in plain)

"""Spending more compute only on the rows that need it: the reasoning router and model cascades.

``answer(call, rows, route, settings=...)`` is how the SQL layers answer a call. A call on one model without
``reasoning => 'auto'`` is one ``udf.batch.evaluate``. Otherwise it runs in stages, each answering the rows the
stage before was unsure of:

* **Router** (``reasoning => 'auto'``, after arXiv 2510.08731): every row is answered without reasoning, with its
  confidence (``udf.confidence``); rows under ``reasoning_threshold`` are asked again with reasoning on.
  With ``reasoning_classifier => DIR`` (a local Hugging Face sequence-classification model, as the semantic router
  uses ModernBERT) the classifier decides up front from each row's prompt instead, and every row is asked once.
* **Cascade** (``model => ['small', 'large']``, after Snowflake AISQL and LOTUS): the first model answers every
  row; rows under ``cascade_threshold`` go to the next model, and so on; the last model answers what is left.
* **Calibrated cascade** (two models, ``target_precision`` or ``target_recall``): before the threshold is chosen, a
  seeded random sample of ``calibration_sample`` rows is answered by both models, and the threshold is the lowest
  whose Clopper-Pearson lower bound (at ``failure_probability`` shared over the candidate thresholds) reaches the
  target. Then, with probability at least ``1 - failure_probability`` over the sample, the first model's accepted
  answers agree with the last model's on at least ``target_precision`` of the rows it answers (for ``llm_filter``
  with ``target_recall``: at least that share of the rows the last model calls true are true in the result).
  Rows of the sample keep the answer the rule gives them.

Whatever answers a row, its value is exactly what that model (and mode) gives for it alone: stages only choose.
``StageStats`` records rows per model (``rows_by_model``), ``rows_reasoned``, ``reasoning_tokens``, and the
generated tokens and LLM seconds saved against asking every row the last stage's way, estimated from that
stage's own cost per request (``routing`` says how).

Defaults: thresholds 0.9. For two labels a confidence of 0.9 is a margin of 0.8 between them: a row goes on
unless the first answer is clearly preferred; ``bench/cascade.py`` measures accuracy and cost around it.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import random
from typing import Any, Callable

from udf.api import EvalOutput, EvalSettings, LLMCall, ResultCache, StageStats
from udf.batch import evaluate
from udf.options import DEFAULT_MAX_REASONING_TOKENS, merge_options, validate_options

DEFAULT_THRESHOLD = 0.9
DEFAULT_SAMPLE = 200
DEFAULT_FAILURE_PROBABILITY = 0.1
MAX_CANDIDATES = 20  # thresholds tried in calibration (the failure probability is shared among them)

Route = Callable[[Any], Any]  # model name | None -> udf.arrow_calls.Target


@dataclasses.dataclass
class _Stage:
    label: str  # what answered: a model name, "name+reasoning" for the router's second pass
    call: LLMCall
    target: Any


def answer(call: LLMCall, rows: list[tuple], route: Route, *, settings: EvalSettings,
           result_cache: ResultCache | None = None) -> EvalOutput:
    """Answer ``call`` for ``rows`` on the model(s) and mode its options name (see the module doc)."""
    opts = merge_options(settings.defaults, call.options)
    models, mode = opts.get("model"), opts.get("reasoning", "off")
    cascade = isinstance(models, tuple)
    if cascade and mode != "off":
        raise ValueError("a model cascade (model => [...]) answers without reasoning; reasoning 'on' or 'auto' "
                         "with a cascade is not supported")
    _check_options(dict(call.options), cascade, mode)
    if not cascade and mode != "auto":
        target = route(models)
        out = evaluate(call, rows, target.backend, settings=settings, result_cache=result_cache,
                       model_id=target.model_id)
        # every row but an all-NULL one is answered (a value or an error): no pass over the rows
        out.stats.rows_by_model = {_name(models, target): out.stats.rows_in - out.stats.null_inputs}
        return out
    if cascade:
        stages = [_Stage(m, _with(call, model=m), route(m)) for m in models]
        threshold_name = "cascade_threshold"
    else:  # the router: the model without reasoning, then with it
        target = route(models)
        name = _name(models, target)
        stages = [_Stage(name, _with(call, reasoning="off"), target),
                  _Stage(name + "+reasoning", _with(call, reasoning="on"), target)]
        threshold_name = "reasoning_threshold"
        if opts.get("reasoning_classifier"):
            return _classified(call, rows, opts, stages, settings, result_cache)
    targets = {k: opts[k] for k in ("target_precision", "target_recall") if k in opts}
    if targets and len(stages) != 2:
        raise ValueError("target_precision / target_recall calibrate a cascade of exactly two models "
                         "(model => ['small', 'large'])")
    if "target_recall" in targets and call.function != "llm_filter":
        raise ValueError("target_recall is for llm_filter (the share of true rows kept); use target_precision")
    if len(targets) > 1:
        raise ValueError("give target_precision or target_recall, not both")
    if targets:
        return _calibrated(call, rows, stages, opts, settings, result_cache)
    threshold = float(opts.get(threshold_name, DEFAULT_THRESHOLD))
    return _staged(rows, stages, threshold, settings, result_cache,
                   {"kind": "cascade" if cascade else "router", threshold_name: threshold})


def describe(call: LLMCall, defaults: dict | None = None) -> dict[str, Any] | None:
    """The plan ``answer`` will follow for ``call``, without running it (for ``explain``); None for one model
    answering one way."""
    opts = merge_options(defaults, call.options)
    models, mode = opts.get("model"), opts.get("reasoning", "off")
    if isinstance(models, tuple):
        if "target_precision" in opts or "target_recall" in opts:
            kind = "recall" if "target_recall" in opts else "precision"
            target = float(opts[f"target_{kind}"])
            delta = float(opts.get("failure_probability", DEFAULT_FAILURE_PROBABILITY))
            return {"kind": "calibrated cascade", "stages": list(models), f"target_{kind}": target,
                    "calibration_sample": int(opts.get("calibration_sample", DEFAULT_SAMPLE)),
                    "failure_probability": delta,
                    "guarantee": guarantee_text(kind, target, delta, models[0], models[-1])}
        return {"kind": "cascade", "stages": list(models),
                "cascade_threshold": float(opts.get("cascade_threshold", DEFAULT_THRESHOLD))}
    if mode == "auto":
        name = models or "default"
        return {"kind": "router", "stages": [name, name + "+reasoning"],
                "reasoning_threshold": float(opts.get("reasoning_threshold", DEFAULT_THRESHOLD))}
    if mode == "on":
        return {"kind": "reasoning",
                "max_reasoning_tokens": int(opts.get("max_reasoning_tokens", DEFAULT_MAX_REASONING_TOKENS))}
    return None


def _check_options(own: dict[str, Any], cascade: bool, mode: str) -> None:
    """A call's routing options without the routing they tune are a mistake worth saying (session defaults may
    set them for every call, so only the call's own are checked)."""
    cascade_only = ("cascade_threshold", "target_precision", "target_recall", "calibration_sample",
                    "calibration_seed", "failure_probability")
    stray = [k for k in cascade_only if k in own and not cascade]
    if stray:
        raise ValueError(f"{', '.join(stray)} tune a model cascade: give model => ['small', 'large'] "
                         "(exactly two models to calibrate with a target)")
    for name in ("reasoning_threshold", "reasoning_classifier"):
        if name in own and mode != "auto":
            raise ValueError(f"{name} tunes reasoning 'auto'")


# --- stages ----------------------------------------------------------------------------------------------------
def _staged(rows: list[tuple], stages: list[_Stage], threshold: float, settings: EvalSettings,
            result_cache: ResultCache | None, plan: dict[str, Any],
            known: dict[int, tuple[Any, str | None]] | None = None, first: EvalOutput | None = None) -> EvalOutput:
    """Each stage answers the rows still open; a row stays only if its confidence is under ``threshold`` (or it
    failed) and a later stage exists. ``first``: the first stage's output, already computed (calibration);
    ``known``: last-stage answers already computed for some rows (the calibration sample)."""
    n = len(rows)
    values: list[Any] = [None] * n
    errors: list[str | None] = [None] * n
    by: list[str | None] = [None] * n  # the stage that answered each row (None: NULL input, no call)
    stats = StageStats(rows_in=n)
    outputs: list[EvalOutput | None] = []
    open_rows = list(range(n))
    for i, stage in enumerate(stages):
        last = i == len(stages) - 1
        if last and known:
            for r in open_rows:
                if r in known:
                    values[r], errors[r] = known[r]
                    by[r] = stage.label
            open_rows = [r for r in open_rows if r not in known]
        out = None
        if open_rows:
            out = first if i == 0 and first is not None else evaluate(
                stage.call, [rows[r] for r in open_rows], stage.target.backend, settings=settings,
                result_cache=result_cache, model_id=stage.target.model_id, confidence=not last)
            _add(stats, out.stats)
            keep = []
            for j, r in enumerate(open_rows):
                asked = out.values[j] is not None or out.errors[j] is not None
                if last or out.errors[j] is None and (not asked or (out.confidence[j] or 0.0) >= threshold):
                    values[r], errors[r] = out.values[j], out.errors[j]
                    by[r] = stage.label if asked else None
                else:
                    keep.append(r)
            open_rows = keep
        outputs.append(out)
    stats.errors = sum(e is not None for e in errors)
    stats.rows_by_model = {s.label: 0 for s in stages}
    for label in by:
        if label is not None:
            stats.rows_by_model[label] += 1
    stats.rows_reasoned = sum(v for k, v in stats.rows_by_model.items() if k.endswith("+reasoning"))
    _savings(stats, outputs)
    stats.routing = {**plan, "threshold": threshold, "stages": [s.label for s in stages]}
    # on_error='raise' needs nothing here: every value and error above comes from an evaluate, which has raised
    return EvalOutput(values=values, errors=errors, stats=stats)


def _savings(stats: StageStats, outputs: list) -> None:
    """Tokens and seconds saved against sending every row the last stage's way, at that stage's measured cost per
    request (unknown, so 0, when no request reached it)."""
    last, first = outputs[-1], outputs[0]
    if last is None or not last.stats.llm_calls:
        return
    per_tokens = last.stats.generated_tokens / last.stats.llm_calls
    per_seconds = last.stats.llm_seconds / last.stats.llm_calls
    requests = first.stats.llm_calls + first.stats.cache_hits if first is not None else 0
    stats.generated_tokens_saved = per_tokens * requests - stats.generated_tokens
    stats.llm_seconds_saved = per_seconds * requests - stats.llm_seconds


# --- a classifier decides up front ------------------------------------------------------------------------------
def _classified(call: LLMCall, rows: list[tuple], opts: dict, stages: list[_Stage], settings: EvalSettings,
                result_cache: ResultCache | None) -> EvalOutput:
    """``reasoning_classifier``: a sequence classifier reads each row's prompt and says whether it needs
    reasoning; each row is asked once, in the mode it was given."""
    from udf.prompts import is_null, make_prompt

    asked = [r for r, row in enumerate(rows) if not (row and all(is_null(v) for v in row))]
    texts = [make_prompt(call.function, call.instruction, list(zip(call.field_names, rows[r])), call.labels)
             for r in asked]
    needs = dict(zip(asked, needs_reasoning(str(opts["reasoning_classifier"]), texts)))
    n = len(rows)
    values: list[Any] = [None] * n
    errors: list[str | None] = [None] * n
    stats = StageStats(rows_in=n)
    stats.rows_by_model = {s.label: 0 for s in stages}
    for stage, wanted in zip(stages, (False, True)):
        group = [r for r in asked if needs[r] is wanted]
        if not group:
            continue
        out = evaluate(stage.call, [rows[r] for r in group], stage.target.backend, settings=settings,
                       result_cache=result_cache, model_id=stage.target.model_id)
        _add(stats, out.stats)
        for j, r in enumerate(group):
            values[r], errors[r] = out.values[j], out.errors[j]
        stats.rows_by_model[stage.label] = _answered(out)
    stats.errors = sum(e is not None for e in errors)
    stats.null_inputs = n - len(asked)
    stats.rows_reasoned = stats.rows_by_model[stages[1].label]
    stats.routing = {"kind": "router", "decided_by": str(opts["reasoning_classifier"]),
                     "stages": [s.label for s in stages]}
    return EvalOutput(values=values, errors=errors, stats=stats)


@functools.lru_cache(maxsize=4)
def _classifier(path: str):
    try:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
    except ImportError as exc:
        raise ValueError(f"reasoning_classifier needs the transformers package: {exc}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    except (OSError, ValueError) as exc:
        raise ValueError(f"reasoning_classifier {path!r} is not a Hugging Face sequence-classification "
                         f"directory: {exc}") from None
    labels = {int(i): str(name).lower() for i, name in (model.config.id2label or {}).items()}
    # the class that means "needs reasoning": one whose name says so, else class 1
    positive = next((i for i, name in labels.items() if "reason" in name and not name.startswith("no")), 1)
    return tokenizer, model, positive


def needs_reasoning(path: str, texts: list[str], batch: int = 32) -> list[bool]:
    """Per text, whether the classifier at ``path`` puts it in its reasoning class (argmax)."""
    import torch

    tokenizer, model, positive = _classifier(path)
    out: list[bool] = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            enc = tokenizer(texts[i:i + batch], padding=True, truncation=True, return_tensors="pt")
            out += (model(**enc).logits.argmax(-1) == positive).tolist()
    return out


# --- calibration ------------------------------------------------------------------------------------------------
def _calibrated(call: LLMCall, rows: list[tuple], stages: list[_Stage], opts: dict, settings: EvalSettings,
                result_cache: ResultCache | None) -> EvalOutput:
    proxy, oracle = stages
    first = evaluate(proxy.call, rows, proxy.target.backend, settings=settings, result_cache=result_cache,
                     model_id=proxy.target.model_id, confidence=True)
    answerable = [r for r in range(len(rows)) if first.values[r] is not None or first.errors[r] is not None]
    size = min(int(opts.get("calibration_sample", DEFAULT_SAMPLE)), len(answerable))
    sample = sorted(random.Random(int(opts.get("calibration_seed", 0))).sample(answerable, size))
    truth = evaluate(oracle.call, [rows[r] for r in sample], oracle.target.backend, settings=settings,
                     result_cache=result_cache, model_id=oracle.target.model_id)
    known = {r: (truth.values[j], truth.errors[j]) for j, r in enumerate(sample)}
    delta = float(opts.get("failure_probability", DEFAULT_FAILURE_PROBABILITY))
    if "target_recall" in opts:
        target, kind = float(opts["target_recall"]), "recall"
    else:
        target, kind = float(opts["target_precision"]), "precision"
    confs = [first.confidence[r] if first.errors[r] is None and first.confidence[r] is not None else -1.0
             for r in sample]
    proxy_values = [first.values[r] for r in sample]
    threshold, checked = calibrate(confs, proxy_values, [known[r][0] for r in sample], target, kind, delta)
    plan = {"kind": "calibrated cascade", f"target_{kind}": target, "failure_probability": delta,
            "calibration_sample": size, "candidates_checked": checked,
            "guarantee": guarantee_text(kind, target, delta, proxy.label, oracle.label)}
    out = _staged(rows, stages, threshold, settings, result_cache, plan, known=known, first=first)
    _add(out.stats, truth.stats)  # the sample's last-model requests are part of the cost
    return out


def calibrate(confidence: list[float], proxy: list[Any], oracle: list[Any], target: float, kind: str,
              delta: float) -> tuple[float, int]:
    """The lowest threshold whose Clopper-Pearson lower bound on ``kind`` (precision: agreement of the accepted
    proxy answers; recall: share of the oracle's true rows kept true) reaches ``target``, at ``delta`` split over
    the candidates tried; ``math.inf`` (every row to the oracle) when none does. Returns (threshold, candidates)."""
    levels = sorted(set(c for c in confidence if c >= 0.0))
    if len(levels) > MAX_CANDIDATES:  # evenly spaced quantiles of the sample's confidences
        levels = sorted(set(levels[round(i * (len(levels) - 1) / (MAX_CANDIDATES - 1))]
                            for i in range(MAX_CANDIDATES)))
    alpha = delta / max(1, len(levels))
    for tau in levels:
        if kind == "recall":
            trials = [(c < tau or p is True) for c, p, o in zip(confidence, proxy, oracle) if o is True]
        else:
            trials = [p == o for c, p, o in zip(confidence, proxy, oracle) if c >= tau]
        if trials and clopper_pearson_lower(sum(trials), len(trials), alpha) >= target:
            return tau, len(levels)
    return math.inf, len(levels)


def clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
    """The exact one-sided lower confidence bound of a binomial proportion at level ``1 - alpha``: the p at which
    seeing ``successes`` or more has probability ``alpha`` (bisection on the binomial tail)."""
    if successes == 0:
        return 0.0
    lo, hi = 0.0, successes / trials
    for _ in range(60):
        mid = (lo + hi) / 2
        if _tail(successes, trials, mid) < alpha:
            lo = mid
        else:
            hi = mid
    return lo


def _tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p)
            + (n - i) * math.log1p(-p) for i in range(k, n + 1)]
    top = max(logs)
    return math.exp(top) * sum(math.exp(v - top) for v in logs)


def guarantee_text(kind: str, target: float, delta: float, first: str, last: str) -> str:
    if kind == "recall":
        return (f"with probability >= {1 - delta:.2f} over the calibration sample, at least {target:.0%} of the rows "
                f"{last!r} calls true stay true")
    return (f"with probability >= {1 - delta:.2f} over the calibration sample, {first!r}'s accepted answers agree "
            f"with {last!r}'s on at least {target:.0%} of the rows it answers")


# --- helpers ---------------------------------------------------------------------------------------------------
def _with(call: LLMCall, **options: Any) -> LLMCall:
    return dataclasses.replace(call, options=validate_options({**dict(call.options), **options}))


def _name(model: Any, target: Any) -> str:
    """A model's name for the statistics: the one the call gave, else the session default's."""
    if isinstance(model, str):
        return model
    return getattr(target, "model", None) or "default"


def _answered(out: EvalOutput) -> int:
    return sum(v is not None or e is not None for v, e in zip(out.values, out.errors))


def _add(total: StageStats, s: StageStats) -> None:
    for name in ("llm_calls", "cache_hits", "prompt_tokens", "cached_prompt_tokens", "generated_tokens",
                 "reasoning_tokens"):
        setattr(total, name, getattr(total, name) + getattr(s, name))
    total.distinct_inputs = max(total.distinct_inputs, s.distinct_inputs)
    total.null_inputs = max(total.null_inputs, s.null_inputs)
    total.solve_seconds += s.solve_seconds
    total.llm_seconds += s.llm_seconds
    total.field_order = total.field_order or s.field_order

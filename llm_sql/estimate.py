"""What an LLM stage will cost, before it runs: the estimates ``llm_sql.explain`` prints.

For one LLM call over its rows (``estimate_call``; the modes count a stage's rows: ``llm_sql.duckdb_mode``,
``llm_sql.spark_explain``), without calling the model:

* **prompts**: exactly those the batch path (``udf.batch.evaluate``) will send: the distinct inputs (every row
  when dedup is off) rendered in ``udf.prompts``' layout, in ``udf.batch.plan_order``'s order, less those the
  persistent result cache already answers (they are not sent);
* **prompt tokens**: tokenised with the model's tokenizer where it is here (the embedded engine's, or the
  checkpoint a node engine server runs: ``udf.agg.tokenizer_of``), special tokens added as
  ``LLMEngine.add_request`` adds them; a backend without one (an external OpenAI-compatible server) gets
  characters / 4, and the plan says it is a guess;
* **cached share**: the engine's block-level prefix cache simulated over those token lists in the planned order
  (``simulate_prefix_cache``): a full block of ``block_size`` tokens is served from the cache when its whole
  prefix chain was seen before, by an earlier prompt of the stage or already in the engine's cache now, and
  the last prompt token is always computed. The cache is assumed not to evict within the stage. The block size
  and what the cache holds now come from the backend (``prefix_block_size``, ``cached_prefix_blocks``: the
  embedded engine, or our engine server's ``/v1/llm_sql/*`` endpoints through ``OpenAIBackend``);
* **generated tokens**: a call with choices generates one of them: their mean token length (plus the EOS a
  choice needs when it is the prefix of another) where the tokenizer is here; otherwise (``llm`` /
  ``llm_extract``, or choices on a backend without a tokenizer) the mean the backend measured on earlier
  requests of the same kind (``engine_backend.backends.base.params_kind``: output constraint and bounds), else
  ``max_tokens``; the plan says which;
* **seconds**: from the backend's measured throughput: ``TimeModel``, a non-negative linear fit of its past
  batches' seconds on (uncached prompt tokens, generated tokens, requests, and engine steps where the backend
  counts them), weighted so that each batch's relative error counts alike. The history is the embedded
  backend's batches, or our engine server's busy periods (measured where the engine runs, so that batches
  several Spark workers send at once are one period); steps, for the history and for the stage alike, come from
  ``engine_backend.backends.embedded.simulate_steps`` (the scheduler's rules over the prompts' tokens, cached
  prefixes and output lengths). With no batch measured yet the time is unknown; ``explain(..., analyze=True)``
  then runs a short ``probe`` first.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

CHARS_PER_TOKEN = 4  # the guess for a backend without a tokenizer


# -- tokens and the prefix cache ----------------------------------------------------------------------------------
def simulate_prefix_cache(token_lists: Sequence[Sequence[int]], block_size: int,
                          already: Sequence[int] | None = None) -> list[int]:
    """Prompt tokens served from a block-level prefix cache, per prompt, sent in this order.

    A prompt's block ``k`` (tokens ``[k*B, (k+1)*B)``) is a hit when blocks ``0..k`` all are (the engine's key of a
    block names its whole prefix) and it is not the block holding the prompt's last token, which is always
    computed; every full block of a prompt is cached after it. ``already[i]``: leading blocks of prompt ``i``
    that the cache holds before the first prompt is sent. Nothing is evicted."""
    seen: dict[tuple, int] = {}  # (parent block id, the block's tokens) -> block id
    cached = []
    for i, toks in enumerate(token_lists):
        toks = list(toks)
        usable = max(0, len(toks) - 1) // block_size  # full blocks that leave the last token to compute
        pre = min(already[i], usable) if already is not None else 0
        parent, hits, matching = -1, 0, True
        for k in range(len(toks) // block_size):
            key = (parent, tuple(toks[k * block_size:(k + 1) * block_size]))
            bid = seen.get(key)
            if matching and k < usable and (bid is not None or k < pre):
                hits += 1
            else:
                matching = False
            if bid is None:
                bid = seen[key] = len(seen)
            parent = bid
        cached.append(hits * block_size)
    return cached


# -- generated tokens ---------------------------------------------------------------------------------------------
def choice_lengths(choices: Sequence[str], tokenizer: Any) -> list[int]:
    """Tokens generated for each choice: its own tokens, plus the EOS that ends a choice another one extends."""
    ids = [tuple(tokenizer.encode(c, add_special_tokens=False)) for c in choices]
    return [len(a) + (1 if any(len(b) > len(a) and b[:len(a)] == a for b in ids) else 0) for a in ids]


def expected_generated(params: Any, history: Any, tokenizer: Any = None) -> tuple[float, str]:
    """(expected generated tokens per request, where the figure comes from); ``history``: the backend's
    ``BatchHistory`` (or None), ``tokenizer``: the model's, if known."""
    from engine_backend.backends.base import params_kind

    if params.choices and tokenizer is not None:
        lengths = choice_lengths(params.choices, tokenizer)
        return sum(lengths) / len(lengths), "the choices' token lengths"
    seen = history.generated_per_request(params_kind(params)) if history is not None else None
    if seen is not None:
        mean, n = seen
        return mean, f"measured: mean over {n} earlier requests of this kind"
    bound = params.max_tokens + ((params.max_reasoning_tokens or 0) if params.reasoning else 0)
    return float(bound), "max_tokens (no earlier request of this kind measured)"


# -- time -------------------------------------------------------------------------------------------------------------
@dataclass
class TimeModel:
    """``seconds ~ a * uncached prompt tokens + b * generated tokens + c * requests (+ d * engine steps)``, every
    coefficient >= 0, fitted on a backend's past batches (``BatchHistory.batches``). The steps term is there when
    every batch has its step count (the embedded engine's, ``simulate_steps``): a step has a fixed cost, which
    makes a few long answers dearer per token than many short ones."""

    coef: tuple[float, ...]
    batches: int

    @classmethod
    def fit(cls, records: Sequence[Any]) -> "TimeModel | None":
        import numpy as np

        records = [r for r in records if r.requests > 0 and r.seconds > 0]
        if not records:
            return None
        steps = all(getattr(r, "steps", None) is not None for r in records)
        x = np.array([(r.uncached_prompt_tokens, r.generated_tokens, r.requests) + ((r.steps,) if steps else ())
                      for r in records], dtype=float)
        y = np.array([r.seconds for r in records], dtype=float)
        k = x.shape[1]
        w = 1.0 / y  # each batch's relative error counts alike
        scale = np.maximum(x.max(axis=0), 1.0)
        xw, yw = x / scale * w[:, None], y * w
        best: tuple[float, int, Any] | None = None
        tol = 1e-9 * float(yw @ yw)
        for mask in range(1, 2 ** k):  # non-negative least squares by its (few) supports
            cols = [j for j in range(k) if mask >> j & 1]
            sol = np.linalg.lstsq(xw[:, cols], yw, rcond=None)[0]
            if (sol < 0).any():
                continue
            resid = float(((xw[:, cols] @ sol - yw) ** 2).sum())
            # ties (fewer batches than terms): the most terms, the least-norm solution spreads over them
            if best is None or resid < best[0] - tol or (abs(resid - best[0]) <= tol and len(cols) > best[1]):
                full = np.zeros(k)
                full[cols] = sol
                best = (resid, len(cols), full)
        if best is None:
            return None
        return cls(tuple(float(v) for v in best[2] / scale), len(records))

    @property
    def uses_steps(self) -> bool:
        return len(self.coef) == 4

    def predict(self, uncached_prompt_tokens: float, generated_tokens: float, requests: float,
                steps: float | None = None) -> float:
        a, b, c = self.coef[:3]
        t = a * uncached_prompt_tokens + b * generated_tokens + c * requests
        if self.uses_steps:
            if steps is None:
                raise ValueError("this time model has a steps term: give the expected engine steps")
            t += self.coef[3] * steps
        return t

    def describe(self) -> str:
        a, b, c = self.coef[:3]
        text = (f"fit on {self.batches} measured batch{'es' if self.batches != 1 else ''}: {a * 1e3:.3g} ms per "
                f"uncached prompt token, {b * 1e3:.3g} ms per generated token, {c * 1e3:.3g} ms per request")
        return text + (f", {self.coef[3] * 1e3:.3g} ms per engine step" if self.uses_steps else "")


def time_model(backend: Any, history: Any = None) -> TimeModel | None:
    """``TimeModel`` fitted on the backend's history (``history`` when the caller already has it)."""
    history = history if history is not None else backend.history()
    return TimeModel.fit(list(history.batches)) if history is not None else None


def probe(backend: Any, seed: int = 0) -> None:
    """Measure a backend that has run nothing yet: four small batches of made-up prompts (random token ids
    where the backend has a tokenizer, random words otherwise) that vary prompt length, output length and
    request count, so that ``TimeModel`` has its terms to fit. Each prompt is unique: no prefix-cache
    block it leaves behind matches a real prompt."""
    import random

    from engine_backend.backends.base import GenerationRequest
    from engine_backend.sampling_params import SamplingParams

    rng = random.Random(seed)
    engine = getattr(backend, "engine", None)
    vocab = getattr(getattr(engine, "config", None), "vocab_size", None)

    def prompt(n: int):
        if vocab:
            return [rng.randrange(vocab) for _ in range(n)]
        return " ".join(f"w{rng.randrange(10**6)}" for _ in range(n))

    for requests, prompt_len, out_len in ((24, 128, 1), (24, 16, 12), (48, 24, 3), (4, 16, 16)):
        params = SamplingParams(max_tokens=out_len, ignore_eos=True)
        backend.generate([GenerationRequest(prompt=prompt(prompt_len), params=params) for _ in range(requests)])


def probe_if_unmeasured(backend: Any) -> float:
    """``probe`` a backend that has measured fewer batches than its time model has terms (the fit would be a
    guess); the seconds the probe took, 0.0 when none was needed."""
    import time

    model = time_model(backend)
    if model is not None and model.batches >= len(model.coef):
        return 0.0
    start = time.perf_counter()
    probe(backend)
    return time.perf_counter() - start


# -- one stage --------------------------------------------------------------------------------------------------------
def call_target(route: Any, opts: dict[str, Any]) -> Any:
    """The ``udf.arrow_calls.Target`` a call's (first) requests go to: ``route(model)`` of the model its merged
    options name (a cascade starts on its first)."""
    models = opts.get("model")
    return route(models[0] if isinstance(models, tuple) else models)


def estimate_call(call: Any, opts: dict[str, Any], rows: Sequence[tuple], target: Any, settings: Any,
                  result_cache: Any, info: dict[str, Any], multi_label: bool = False) -> None:
    """Fill ``info`` with the estimates of answering ``call`` (its options merged with the session's: ``opts``)
    for ``rows`` (field tuples, duplicates included where the plan keeps them) on ``target``
    (``udf.arrow_calls.Target``), as ``udf.batch.evaluate`` would with ``settings`` (``EvalSettings``) and
    ``result_cache``: distinct inputs, requests, prompt tokens, prefix hits, generated tokens, seconds."""
    from optimizer.metrics import trie_hit_rate
    from udf.agg import tokenizer_of
    from udf.batch import _cache_key, backend_model_id, plan_order
    from udf.functions import params_key, sampling_params
    from udf.options import DEFAULT_MAX_FIELD_CHARS, DEFAULT_REORDER_FIELDS
    from udf.prompts import build_prompt, prompt_head, render_value

    max_chars = int(opts.get("max_field_chars", DEFAULT_MAX_FIELD_CHARS))
    multiplicity: Counter[tuple[str, ...]] = Counter(
        tuple(render_value(v, max_chars) for v in r) for r in rows if not (r and all(v is None for v in r)))
    rendered = list(multiplicity)
    info["distinct_inputs"] = len(rendered)
    head = prompt_head(call.function, call.instruction, call.labels, opts.get("system"))
    order, fields, _ = plan_order(call, rendered, settings.reorder,
                                  bool(opts.get("reorder_fields", DEFAULT_REORDER_FIELDS)))
    planned = [build_prompt(head, call.function, [call.field_names[i] for i in fo], [rendered[g][i] for i in fo])
               for g, fo in zip(order, fields)]
    # dedup sends each distinct tuple once; without it, every row is its own request
    counts = [1 if settings.dedup else multiplicity[rendered[g]] for g in order]
    original = [build_prompt(head, call.function, list(call.field_names), list(r)) for r in rendered]
    if fields:
        info["field_order"] = [call.field_names[i] for i in Counter(fields).most_common(1)[0][0]]
    if multi_label:
        info["est_note"] = "multi-label: the prompts are built per value at run time; tokens and time not estimated"
        info["est_hit_rate"] = trie_hit_rate(planned) if planned else 0.0
        info["est_hit_rate_original"] = trie_hit_rate(original) if original else 0.0
        info["est_prompt_tokens"] = sum(len(p) for p in planned) // CHARS_PER_TOKEN
        return

    backend = target.backend
    routed = opts.get("reasoning", "off") == "auto" or isinstance(opts.get("model"), tuple)
    if routed:
        info["est_note"] = ("estimated as the first model answering every input once, without reasoning; the rows "
                            "the routing sends on cost more")
    p_opts = dict(opts, reasoning="off") if routed else opts
    params = sampling_params(call, p_opts)
    if opts.get("reasoning") == "on":
        info["est_note"] = "reasoning: the engine wraps each prompt in the model's chat template (not counted here)"

    # the persistent result cache answers some prompts: they are not sent
    answered: set[str] = set()
    reproducible = params.greedy or params.seed is not None
    if settings.result_cache and result_cache is not None and reproducible and planned:
        pkey = params_key(params)
        if opts.get("return_reasoning"):
            pkey["record"] = 1
        model_id = target.model_id or backend_model_id(backend)
        keys = {p: _cache_key(model_id, pkey, p) for p in planned}
        hits = result_cache.get_many(list(dict.fromkeys(keys.values())))
        answered = {p for p, k in keys.items() if k in hits}
    info["est_result_cache_hits"] = sum(c for p, c in zip(planned, counts) if p in answered)
    # the requests in the order sent: dedup off sends a tuple's duplicates one after another
    sent = [p for p, c in zip(planned, counts) if p not in answered for _ in range(c)]
    info["est_requests"] = len(sent)

    tokenizer = tokenizer_of(target)[0]
    block = backend.prefix_block_size()
    sent_ids: list[list[int]] = []
    per_cached: list[int] | None = None
    if tokenizer is not None:
        unique = list(dict.fromkeys(original + planned))
        ids = dict(zip(unique, tokenizer.encode_batch(unique, add_special_tokens=True)))
        sent_ids = [ids[p] for p in sent]
        info["est_prompt_tokens"] = sum(map(len, sent_ids))
        info["est_tokens_source"] = "tokenised"
        if block:
            already = backend.cached_prefix_blocks(sent_ids)
            per_cached = simulate_prefix_cache(sent_ids, block, already)
            cached = sum(per_cached)
            info["est_cached_prompt_tokens"] = cached
            info["est_hit_rate"] = cached / info["est_prompt_tokens"] if info["est_prompt_tokens"] else 0.0
            orig_ids = [ids[p] for p in original]
            total = sum(map(len, orig_ids))
            info["est_hit_rate_original"] = (sum(simulate_prefix_cache(orig_ids, block)) / total) if total else 0.0
            info["est_hit_source"] = f"block-level prefix cache, {block}-token blocks"
        else:
            per_cached = [0] * len(sent_ids)
            info["est_cached_prompt_tokens"] = 0
            info["est_hit_rate"] = info["est_hit_rate_original"] = 0.0
            info["est_hit_source"] = "no prefix cache"
    else:  # no tokenizer: characters, guessed into tokens
        info["est_prompt_tokens"] = sum(len(p) for p in sent) // CHARS_PER_TOKEN
        info["est_tokens_source"] = f"guessed: characters / {CHARS_PER_TOKEN} (the backend has no tokenizer here)"
        info["est_hit_rate"] = trie_hit_rate(sent) if sent else 0.0
        info["est_hit_rate_original"] = trie_hit_rate(original) if original else 0.0
        info["est_cached_prompt_tokens"] = int(info["est_hit_rate"] * info["est_prompt_tokens"])
        info["est_hit_source"] = "characters shared with an earlier prompt (no tokenizer)"

    history = backend.history()  # our engine server's is an HTTP GET: once per estimate
    per_request, source = expected_generated(params, history, tokenizer)
    info["est_generated_tokens"] = round(per_request * len(sent))
    info["est_generated_source"] = source
    model = time_model(backend, history)
    steps = None
    if model is not None and model.uses_steps:
        if per_cached is not None:
            steps = backend.steps_for(sent_ids, per_cached, [max(1, round(per_request))] * len(sent))
        if steps is not None:
            info["est_steps"] = steps
        else:  # the history has steps but this backend cannot count them for the stage: the terms without
            model = TimeModel.fit([_without_steps(r) for r in history.batches])
    if not sent:
        info["est_seconds"], info["est_seconds_source"] = 0.0, "nothing to send"
    elif model is None:
        info["est_seconds"] = None
        info["est_seconds_source"] = ("no batch measured on this backend yet; explain(..., analyze=True) probes it "
                                      "first")
    else:
        uncached = info["est_prompt_tokens"] - info["est_cached_prompt_tokens"]
        info["est_seconds"] = model.predict(uncached, per_request * len(sent), len(sent), steps)
        info["est_seconds_source"] = model.describe()


def _without_steps(record: Any) -> Any:
    from dataclasses import replace

    return replace(record, steps=None)

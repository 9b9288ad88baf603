"""Admission at any accepted KV budget (issue 17): every request finishes, alone if need be, exact and leak-free.

The property test's size comes from the environment, so a long run is the same test:
``LLMSQL_PROPERTY_CASES=10000 python -m pytest -q tests/engine_backend/test_admission.py -k property``.
"""
import os
import random

import pytest
import torch

from engine_backend import LLMEngine, SamplingParams
from engine_backend.kv import KVCacheManager, specs_for_model
from engine_backend.loader import read_config
from engine_backend.scheduler import Scheduler
from engine_backend.sequence import Sequence
from engine_backend.spec import Proposer
from engine_backend.testing import ARCHS, HF_ARCHS

CASES = int(os.environ.get("LLMSQL_PROPERTY_CASES", "42"))
SEED = int(os.environ.get("LLMSQL_PROPERTY_SEED", "0"))
TIE = 1e-4  # logits this close to the oracle's best are a near-tie float noise may break either way


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on shared cores spinning threads cost ~100x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def minimum_budget(path, max_model_len):
    """The smallest kv_cache_memory the constructor accepts, in bytes, and the page size."""
    probe = LLMEngine(model=str(path), max_model_len=max_model_len, kv_cache_memory="64MB")
    page = probe.kv.large_page_bytes
    return probe.kv.large_pages_for_one_request(max_model_len) * page, page


def kv_for(path, num_pages, prefix_caching=True):
    specs = specs_for_model(read_config(path), 16, torch.float32)
    return KVCacheManager(specs, num_pages, prefix_caching)


def drive(scheduler, max_model_len, token=7):
    """The engine's step loop without a model: every scheduled token is computed, samples are ``token``.

    Returns (steps, requests finished with an error). A step that schedules nothing while work waits fails.
    """
    steps, errors = 0, []
    while scheduler.has_work():
        steps += 1
        batch, failed = scheduler.schedule()
        assert batch or failed, f"step {steps} scheduled nothing: {scheduler.describe()}"
        for seq in failed:
            errors.append(seq)
            scheduler.finish(seq)
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed += n
            if seq.num_computed == len(seq.token_ids):
                seq.token_ids.append(token)
        for seq in batch.seqs:
            scheduler.after_step(seq)
            if seq.num_output_tokens >= seq.params.max_tokens or len(seq.token_ids) >= max_model_len:
                scheduler.finish(seq)
    return steps, errors


def assert_no_leak(kv):
    kv.reset_prefix_cache()
    assert kv.pool.num_free == kv.pool.num_pages
    assert all(a.ref == {} and not a.cached for a in kv.allocators.values())
    if kv.has_host_tier:
        assert kv.host_pool.num_free == kv.host_pool.num_pages
        assert all(m.host.ref == {} and not m.host.cached for m in kv.managers.values())


# ---- the snippet ------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["gemma3_text", "gemma2", "llmsql_hetero", "mistral", "llama"])
def test_minimum_budget_runs_long_prompts(tiny_model_dir, arch):
    path = tiny_model_dir(arch, seed=4)
    one, _ = minimum_budget(path, 256)
    with pytest.raises(ValueError, match="kv_cache_memory"):
        LLMEngine(model=str(path), max_model_len=256, kv_cache_memory=one - 1)
    engine = LLMEngine(model=str(path), max_model_len=256, kv_cache_memory=one)
    prompts = [list(range(5, 125)), list(range(5, 235))]
    outs = engine.generate(prompts, SamplingParams(max_tokens=100, ignore_eos=True))
    assert [(o.finish_reason, len(o.token_ids)) for o in outs] == [("length", 100), ("length", 256 - 230)]
    assert_matches_oracle(path, outs)
    assert engine.stats()["kv_pages_used"] == 0
    assert_no_leak(engine.kv)


# ---- the scheduler's promise, without a model ------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_every_accepted_request_runs_alone_at_the_minimum(tiny_model_dir, arch):
    """At the smallest accepted budget, one request of any length runs from an empty cache without help."""
    specs = specs_for_model(read_config(tiny_model_dir(arch)), 16, torch.float32)
    for max_model_len in (48, 100):
        pages = KVCacheManager(specs, 0).large_pages_for_one_request(max_model_len)
        for prefix_caching in (False, True):
            for length in range(1, max_model_len):
                kv = KVCacheManager(specs, pages, prefix_caching)
                scheduler = Scheduler(kv, 8, 64)
                seq = Sequence("r", [(i * 7) % 50 for i in range(length)], SamplingParams(max_tokens=10**6), 0)
                scheduler.add(seq)
                steps, errors = drive(scheduler, max_model_len)
                assert not errors and not seq.exclusive, (max_model_len, prefix_caching, length)
                assert_no_leak(kv)


def test_lone_request_blocked_by_the_prefix_cache_starts_over_alone(tiny_model_dir):
    """A hit on another request's large page leaves a Gemma 3 request one page short at the minimum budget:
    it empties the cache and reruns alone instead of waiting forever."""
    path = tiny_model_dir("gemma3_text")
    kv = kv_for(path, kv_for(path, 0).large_pages_for_one_request(64))
    scheduler = Scheduler(kv, 1, 16)
    base = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6, 2, 6, 4, 3, 3, 8, 3, 2, 7, 9]
    first = Sequence("a", base[:21], SamplingParams(max_tokens=3), 0)
    second = Sequence("b", base[:31], SamplingParams(max_tokens=8), 1)
    scheduler.add(first)
    scheduler.add(second)
    steps, errors = drive(scheduler, 64)
    assert not errors and second.exclusive and second.num_output_tokens == 8
    assert_no_leak(kv)


def test_request_that_cannot_fit_alone_fails_with_the_budget_it_needs(tiny_model_dir):
    path = tiny_model_dir("gemma3_text")
    engine = LLMEngine(model=str(path), max_model_len=64, kv_cache_memory=minimum_budget(path, 64)[0])
    engine.max_model_len = 256  # let in a request the constructor did not promise room for
    outs = engine.generate([list(range(5, 205)), list(range(5, 30))], SamplingParams(max_tokens=4, ignore_eos=True))
    need = engine.kv.large_pages_for_one_request(200)
    assert outs[0].finish_reason == "error" and f"{need * engine.kv.large_page_bytes} bytes" in outs[0].error
    assert outs[1].finish_reason == "length" and len(outs[1].token_ids) == 4
    assert_no_leak(engine.kv)


def test_a_step_without_progress_raises_instead_of_spinning(tiny_model_dir, monkeypatch):
    engine = LLMEngine(model=str(tiny_model_dir("llama")), kv_cache_memory="4MB")
    monkeypatch.setattr(engine.scheduler, "_admit", lambda batch, budget, failed: None)  # a scheduler bug
    with pytest.raises(RuntimeError, match="scheduled nothing.*waiting 1"):
        engine.generate([[5, 6, 7]], SamplingParams(max_tokens=2))
    assert not engine.has_unfinished_requests()  # generate() took its requests back out
    from engine_backend.async_engine import AsyncLLMEngine, EngineError
    with AsyncLLMEngine(engine) as aengine:  # the server's engine thread: the callers hear it, nobody hangs
        with pytest.raises(EngineError, match="scheduled nothing"):
            aengine.generate_sync([[5, 6, 7]], SamplingParams(max_tokens=2), timeout=30)
        assert not engine.has_unfinished_requests()


# ---- the property test -------------------------------------------------------------------------------------
_oracles = {}


def oracle_logits(path, sequences):
    """Next-token logits at every position of each sequence: transformers (or, for the test arch that
    transformers cannot load, the engine's model with no KV cache), all sequences in one forward."""
    key = str(path)
    if key not in _oracles:
        if read_config(path).arch in HF_ARCHS:
            transformers = pytest.importorskip("transformers")
            _oracles[key] = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        else:
            from engine_backend.loader import load_model
            _oracles[key] = load_model(str(path))
    model = _oracles[key]
    with torch.no_grad():
        if hasattr(model, "generate"):  # right padding: causal attention never looks at the pad after a token
            width = max(map(len, sequences))
            ids = torch.tensor([s + [0] * (width - len(s)) for s in sequences])
            logits = model(ids).logits
            return [logits[i, :len(s)] for i, s in enumerate(sequences)]
        from engine_backend.models.dense_attention import DenseAttention
        flat = torch.tensor([t for s in sequences for t in s])
        pos = torch.cat([torch.arange(len(s)) for s in sequences])
        hidden = model(flat, pos, DenseAttention(model.config, [len(s) for s in sequences]))
        return list(model.compute_logits(hidden).float().split([len(s) for s in sequences]))


def assert_matches_oracle(path, outs, context=""):
    """Greedy outputs equal the oracle's greedy choice at every generated position (teacher forcing, which
    is greedy decoding token for token); a near-tie within TIE of the best counts as equal."""
    done = [o for o in outs if o.token_ids]
    seqs = [list(o.prompt_token_ids) + list(o.token_ids[:-1]) for o in done]
    for o, s, logits in zip(done, seqs, oracle_logits(path, seqs) if seqs else []):
        rows = logits[len(o.prompt_token_ids) - 1:]
        for step, (row, token) in enumerate(zip(rows, o.token_ids)):
            assert row[token] >= row.max() - TIE, (
                f"{context}{o.request_id} token {step}: engine {token}, oracle {int(row.argmax())}")


class WrongProposer(Proposer):
    """Proposes tokens that are almost never right: nearly every draft is rejected and rolled back."""

    name = "wrong"

    def propose(self, seqs, ks):
        return [[(s.token_ids[-1] * 7 + j + 11) % 400 + 50 for j in range(k)] for s, k in zip(seqs, ks)]


def random_case(rng, path, page_of, minimum_of):
    """One random workload: budget from the accepted minimum up, prompts up to max_model_len - 1."""
    max_model_len = rng.choice([40, 64, 64, 100, 128, 256])
    if max_model_len not in minimum_of:
        minimum_of[max_model_len], page_of[max_model_len] = minimum_budget(path, max_model_len)
    one, page = minimum_of[max_model_len], page_of[max_model_len]
    pages = rng.choice([0, 0, 1, 2, rng.randrange(one // page * 4 + 1)])
    engine_args = dict(max_model_len=max_model_len, kv_cache_memory=one + pages * page + rng.randrange(page),
                       enable_prefix_caching=rng.random() < 0.5, max_num_batched_tokens=rng.choice([8, 16, 64, 1024]),
                       max_num_seqs=rng.choice([1, 4, 128]))
    base = [rng.randrange(5, 500) for _ in range(max_model_len)]  # shared prefixes give prefix hits
    requests = []
    for _ in range(rng.randint(1, 32)):
        length = rng.choice([rng.randint(1, max_model_len - 1), rng.randint(1, min(24, max_model_len - 1))])
        shared = rng.randint(0, length)
        prompt = base[:shared] + [rng.randrange(5, 500) for _ in range(length - shared)]
        max_tokens = rng.choice([1, rng.randint(1, 8), rng.randint(1, 8), rng.randint(1, max_model_len)])
        requests.append((prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=rng.random() < 0.7)))
    # drawn last, so the cases without a host tier stay the ones they were before it existed
    swap_space = rng.choice([0, 0, page, one, 4 * one])
    engine_args.update(swap_space=swap_space, preemption=rng.choice(["auto", "swap"]) if swap_space else "recompute",
                       stream_expansion=rng.choice([None, 0.5, 2.0]))
    # drawn after the host tier, for the same reason: speculation, with drafts right, wrong, or chosen by goodput
    engine_args.update(speculative=rng.choice([
        None, None, "ngram", {"method": ["ngram", "batch"], "num_speculative_tokens": rng.randint(1, 6)},
        {"method": WrongProposer(), "num_speculative_tokens": rng.randint(1, 6)},
        {"method": "draft", "draft_model": str(path), "num_speculative_tokens": rng.choice(["auto", 3])}]))
    return engine_args, requests


def run_case(path, engine_args, requests):
    """Every request finishes within a bounded number of steps; returns the outputs and the engine."""
    engine = LLMEngine(model=str(path), **engine_args)
    for prompt, params in requests:
        engine.add_request(prompt, params)
    limit = 10 * sum(len(p) + s.max_tokens for p, s in requests) + 100  # recomputation after preemption included
    outs, steps = [], 0
    while engine.has_unfinished_requests():
        steps += 1
        assert steps <= limit, f"not finished after {limit} steps: {engine.scheduler.describe()}"
        outs += engine.step()
    outs.sort(key=lambda o: int(o.request_id.split("-")[1]))
    return outs, engine


@pytest.mark.parametrize("arch", ARCHS)
def test_property_any_budget_every_request_finishes_exact_and_leak_free(tiny_model_dir, arch):
    path = tiny_model_dir(arch)
    page_of, minimum_of = {}, {}
    for case in range(ARCHS.index(arch), CASES, len(ARCHS)):
        rng = random.Random(f"{SEED}-{case}")
        engine_args, requests = random_case(rng, path, page_of, minimum_of)
        where = f"case {case} (LLMSQL_PROPERTY_SEED={SEED}) {engine_args}: "
        outs, engine = run_case(path, engine_args, requests)
        assert len(outs) == len(requests)
        for o, (prompt, params) in zip(outs, requests):
            assert o.finish_reason in ("length", "stop"), where + f"{o.request_id}: {o.finish_reason} {o.error}"
            assert len(o.token_ids) == min(params.max_tokens, engine_args["max_model_len"] - len(prompt)) or \
                o.finish_reason == "stop", where + o.request_id
        assert_matches_oracle(path, outs, where)
        assert engine.stats()["kv_pages_used"] == 0, where
        assert_no_leak(engine.kv)

"""Pie's host tier: swapped-out requests and host-tier prefix hits stay exact; neither tier leaks pages."""
import random
import time
from collections import Counter

import pytest
import torch

from engine_backend import LLMEngine, SamplingParams
from engine_backend.kv import KVCacheManager, specs_for_model
from engine_backend.loader import read_config
from engine_backend.scheduler import Scheduler
from engine_backend.preemption import SwapPreemption
from engine_backend.sequence import Sequence
from engine_backend.server import render_metrics
from test_admission import assert_matches_oracle, one_torch_thread  # noqa: F401 (an autouse fixture)

PREFIX = ("Classify the sentiment of this beer review as positive or negative. The review follows: "
          "The beer pours a deep amber color with a thick head that lingers. ")
ROWS = ["Aroma of caramel malt and toffee.", "Flat and sour, a drain pour.", "Crisp, clean, refreshing finish.",
        "Aroma of caramel malt and dried fruit.", "Thin body, watery, no hop character at all."]
ARCHS = ["llama", "gemma3_text", "llmsql_hetero"]  # one type; sliding + full; heterogeneous page sizes
# Pie's real setting: pinned host memory, a copy stream and events. CI has no GPU; these run where one is.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def tight_engine(path, requests_on_device=1.5, **kw):
    """An engine whose device KV budget holds about ``requests_on_device`` requests of 256 tokens."""
    probe = LLMEngine(model=str(path), kv_cache_memory="32MB", max_model_len=256, device=kw.get("device", "cpu"))
    one = probe.kv.large_pages_for_one_request(256) * probe.kv.large_page_bytes
    kw = {"swap_space": "64MB", "preemption": "swap", "max_num_batched_tokens": 48, **kw}
    return LLMEngine(model=str(path), kv_cache_memory=int(one * requests_on_device), max_model_len=256, **kw)


def workload():
    return [PREFIX + r + " " + ROWS[(i + 1) % 5] * (i % 3) for i, r in enumerate(ROWS * 2)]


def generate(engine, texts, params):
    """``engine.generate``, checking after every step that no copy or deferred release is left behind."""
    ids = [engine.add_request(t, params) for t in texts]
    outs = {}
    while engine.has_unfinished_requests():
        outs.update((o.request_id, o) for o in engine.step())
        kv = engine.kv
        assert not (kv._copies_out or kv._copies_in or kv._release_after_copies), "step left copies behind"
    return [outs[i] for i in ids]


def assert_no_leak(engine):
    kv = engine.kv
    assert engine.stats()["kv_pages_used"] == 0
    assert all(m.host.ref.get(p, 0) == 0 for m in kv.managers.values() for p in m.host.ref), "host pages held"
    kv.reset_prefix_cache()
    assert kv.pool.num_free == kv.pool.num_pages
    assert kv.host_pool.num_free == kv.host_pool.num_pages
    for m in kv.managers.values():
        assert m.device.ref == {} and m.host.ref == {} and not m.device.cached and not m.host.cached


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ARCHS)
def test_swapped_out_requests_come_back_exact(tiny_model_dir, arch, device):
    path = tiny_model_dir(arch)
    engine = tight_engine(path, requests_on_device=1.0, device=device)
    outs = generate(engine, workload(), SamplingParams(max_tokens=24, ignore_eos=True))
    assert all(o.finish_reason == "length" for o in outs), [o.error for o in outs]
    assert_matches_oracle(path, outs, f"{arch}: ")
    s = engine.stats()
    assert s["preemptions_swapped"] > 0, s
    assert s["swapped_out_blocks"] > 0 and s["swapped_in_blocks"] > 0
    assert s["swap_seconds"] > 0 and 0.0 <= s["swap_hidden_fraction"] <= 1.0
    assert_no_leak(engine)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ARCHS)
def test_host_tier_prefix_hits_are_exact(tiny_model_dir, arch, device):
    path = tiny_model_dir(arch)
    engine = LLMEngine(model=str(path), kv_cache_memory="8MB", swap_space="16MB", max_model_len=256, device=device)
    texts = workload()[:5]
    first = engine.generate(texts, SamplingParams(max_tokens=8))
    engine.kv.evict_device_cache()  # every cached block now lives on the host only
    before = engine.stats()
    assert before["host_kv_bytes_used"] > 0 and before["kv_pages_cached"] == 0
    again = engine.generate(texts, SamplingParams(max_tokens=8))
    s = engine.stats()
    host_hits = s["host_cached_prompt_tokens"] - before["host_cached_prompt_tokens"]
    assert host_hits > 0 and host_hits <= s["cached_prompt_tokens"] - before["cached_prompt_tokens"]
    assert s["swapped_in_blocks"] > before["swapped_in_blocks"]
    assert [o.token_ids for o in again] == [o.token_ids for o in first]
    assert all(o.num_cached_tokens > 0 for o in again)
    assert_matches_oracle(path, again, f"{arch}: ")
    metrics = render_metrics(s, Counter())
    assert f"llm_sql_host_cached_prompt_tokens_total {s['host_cached_prompt_tokens']}" in metrics
    assert "# TYPE llm_sql_swapped_in_blocks_total counter" in metrics
    assert_no_leak(engine)


def test_device_evictions_spill_to_the_host_and_hit_there(tiny_model_dir):
    """More distinct prefixes than the device caches: without a host tier they are recomputed, with one they hit."""
    path = tiny_model_dir("llama")
    groups = [f"Group {g}: " + " ".join(ROWS[(g + k) % 5] for k in range(4)) + " " for g in range(6)]
    texts = [g + r for r in ROWS[:2] for g in groups]
    hits = {}
    for swap in (0, "32MB"):
        engine = tight_engine(path, requests_on_device=2.0, swap_space=swap, preemption="recompute")
        outs = engine.generate(texts, SamplingParams(max_tokens=4))
        assert_matches_oracle(path, outs)
        hits[swap] = engine.stats()["cached_prompt_tokens"]
        if swap:
            assert engine.stats()["host_cached_prompt_tokens"] > 0
            assert_no_leak(engine)
    assert hits["32MB"] > hits[0]


def test_full_host_tier_falls_back_to_recompute(tiny_model_dir):
    path = tiny_model_dir("gemma3_text")
    probe = tight_engine(path)
    # one host page: no victim fits
    engine = tight_engine(path, requests_on_device=1.0, swap_space=probe.kv.large_page_bytes)
    outs = engine.generate(workload(), SamplingParams(max_tokens=24, ignore_eos=True))
    assert_matches_oracle(path, outs)
    s = engine.stats()
    assert s["preemptions_recomputed"] > 0 and s["preemptions_swapped"] == 0
    assert_no_leak(engine)


def test_auto_preemption_chooses_by_measured_rates(tiny_model_dir):
    path = tiny_model_dir("llama")
    engine = tight_engine(path, requests_on_device=1.0, preemption="auto")
    outs = engine.generate(workload(), SamplingParams(max_tokens=24, ignore_eos=True))
    assert_matches_oracle(path, outs)
    s = engine.stats()
    assert s["preemptions"] == s["preemptions_swapped"] + s["preemptions_recomputed"] > 0
    assert engine.rates.prefill_tokens_per_s and engine.rates.copy_bytes_per_s
    # prefill far faster than any copy makes recompute the cheaper choice (the copier's measured bandwidth
    # replaces any value set here every step; the prefill rate is smoothed, so a huge one lasts the run)
    engine.rates.prefill_tokens_per_s = 1e12
    recomputed = engine.stats()["preemptions_recomputed"]
    engine.generate(workload(), SamplingParams(max_tokens=24, ignore_eos=True))
    assert engine.stats()["preemptions_recomputed"] > recomputed
    assert_no_leak(engine)


def test_bad_swap_options_are_clear_errors(tiny_model_dir):
    path = str(tiny_model_dir("llama"))
    with pytest.raises(ValueError, match="preemption must be one of"):
        LLMEngine(model=path, kv_cache_memory="8MB", preemption="sometimes")
    with pytest.raises(ValueError, match="needs a host tier"):
        LLMEngine(model=path, kv_cache_memory="8MB", preemption="swap")
    with pytest.raises(ValueError, match="cannot read a memory size"):
        LLMEngine(model=path, kv_cache_memory="8MB", swap_space="lots")
    with pytest.raises(ValueError, match="holds no KV page"):
        LLMEngine(model=path, kv_cache_memory="8MB", swap_space=10)


# Streaming needs staging that is cheap next to the pool it extends: tiny models have few layers, so the
# tests ask for it explicitly and give Gemma 3 more layers (10 sliding + 2 full).
STREAMING = [("llama", {}, 2.5), ("gemma3_text", {"num_hidden_layers": 12}, 3.0), ("llmsql_hetero", {}, 3.0)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch,overrides,requests_on_device", STREAMING)
def test_streamed_requests_match_the_oracle(tiny_model_dir, arch, overrides, requests_on_device, device):
    """Pie's expansion: requests beyond the device pool run on from the host tier, layer by layer."""
    path = tiny_model_dir(arch, **overrides)
    engine = tight_engine(path, requests_on_device=requests_on_device, stream_expansion=1.0, device=device)
    assert engine.kv.stream_slots and engine.stats()["kv_staging_bytes"] > 0
    outs = generate(engine, workload(), SamplingParams(max_tokens=24, ignore_eos=True))
    assert all(o.finish_reason == "length" for o in outs), [o.error for o in outs]
    assert_matches_oracle(path, outs, f"{arch}: ")
    s = engine.stats()
    assert s["stream_demotions"] > 0 and s["streamed_running"] == 0, s
    assert_no_leak(engine)


def test_stream_share_follows_whether_prefetch_hides(tiny_model_dir, monkeypatch):
    """Gathers that finish before their layer grow the streamed share; gathers that make layers wait
    shrink it, and the outputs stay exact either way."""
    from engine_backend.kv import copier

    path = tiny_model_dir("llama")
    fast = tight_engine(path, requests_on_device=2.5, stream_expansion=1.0)
    fast.generate(workload(), SamplingParams(max_tokens=24, ignore_eos=True))
    assert fast.kv.stream_share == 1.0

    timed = copier.KVCopier._timed

    def slow_copy(self, job):  # the copy thread's gathers and write-backs over a link far slower than compute
        time.sleep(0.02)
        timed(self, job)
    monkeypatch.setattr(copier.KVCopier, "_timed", slow_copy)
    slow = tight_engine(path, requests_on_device=2.5, stream_expansion=1.0)
    outs = slow.generate(workload(), SamplingParams(max_tokens=24, ignore_eos=True))
    assert_matches_oracle(path, outs)
    assert slow.kv.stream_share < 0.5 and slow.stats()["swap_hidden_fraction"] < 0.9


def test_adapt_stream_share_moves_within_bounds(tiny_model_dir):
    kv = KVCacheManager(specs_for_model(read_config(tiny_model_dir("llmsql_hetero")), 16, torch.float32), 8,
                        num_host_pages=8)
    kv.stream_slots = {s.name: 10 for s in kv.specs}
    for _ in range(50):
        kv.adapt_stream_share(1.0)
    assert kv.stream_share == 1.0 and all(kv.stream_limit(s.name) == 10 for s in kv.specs)
    kv.adapt_stream_share(0.7)  # between the thresholds: unchanged
    assert kv.stream_share == 1.0
    for _ in range(50):
        kv.adapt_stream_share(0.0)
    assert kv.stream_share == 0.0 and all(kv.stream_limit(s.name) == 0 for s in kv.specs)
    kv.adapt_stream_share(None)  # a step that streamed nothing says nothing
    assert kv.stream_share == 0.0


@pytest.mark.parametrize("arch", ARCHS)
def test_random_mixes_leak_no_page_in_either_tier(tiny_model_dir, arch):
    """Requests, aborts, swaps, host-tier hits and evictions at random, with the model left out: every
    request finishes or is aborted, and both pools are whole at the end."""
    specs = specs_for_model(read_config(tiny_model_dir(arch)), 16, torch.float32)
    one = KVCacheManager(specs, 0).large_pages_for_one_request(64)
    for case in range(12):
        rng = random.Random(f"swap-{arch}-{case}")
        kv = KVCacheManager(specs, one + rng.randrange(3 * one), rng.random() < 0.8,
                            num_host_pages=rng.choice([1, one, 4 * one]))
        kv.stream_slots = {s.name: rng.choice([0, 4, 64]) for s in specs}  # streaming on, sometimes
        kv.stream_share = rng.random()
        scheduler = Scheduler(kv, rng.choice([2, 8]), rng.choice([8, 32, 64]), preemption=SwapPreemption())
        base = [rng.randrange(5, 500) for _ in range(64)]
        live = []
        for r in range(rng.randint(4, 24)):
            shared = rng.randint(0, 48)
            prompt = base[:shared] + [rng.randrange(5, 500) for _ in range(rng.randint(1, 63 - shared))]
            seq = Sequence(f"r{r}", prompt, SamplingParams(max_tokens=rng.randint(1, 64 - len(prompt))), r)
            scheduler.add(seq)
            live.append(seq)
        for _ in range(5000):
            if not scheduler.has_work():
                break
            if rng.random() < 0.03:
                scheduler.finish(live.pop(rng.randrange(len(live))))  # an abort, running or waiting
                continue
            if rng.random() < 0.05:
                kv.evict_device_cache()
            batch, failed = scheduler.schedule()
            assert not failed
            kv.after_copies()  # the copies themselves are the runner's; the books are what is tested here
            for seq, n in zip(batch.seqs, batch.num_new_tokens):
                seq.num_computed += n
                if seq.num_computed == len(seq.token_ids):
                    seq.token_ids.append(7)
            for seq in batch.seqs:
                scheduler.after_step(seq)
                if seq.num_output_tokens >= seq.params.max_tokens or len(seq.token_ids) >= 64:
                    scheduler.finish(seq)
                    live.remove(seq)
        assert not scheduler.has_work(), f"case {case}: {scheduler.describe()}"
        kv.take_copies()
        kv.reset_prefix_cache()
        assert kv.pool.num_free == kv.pool.num_pages, f"case {case}"
        assert kv.host_pool.num_free == kv.host_pool.num_pages, f"case {case}"


def test_budget_split_between_pool_and_staging(tiny_model_dir):
    """Staging comes out of kv_cache_memory; by default only where it is cheap; never below one request."""
    from engine_backend.kv.storage import STAGING_DEPTH, StagingBuffers, split_budget

    deep = specs_for_model(read_config(tiny_model_dir("llama", num_hidden_layers=24)), 16, torch.float32)
    shallow = specs_for_model(read_config(tiny_model_dir("llama")), 16, torch.float32)
    page = KVCacheManager(deep, 0).large_page_bytes
    budget = 100 * page
    pool, slots = split_budget(deep, budget, None, num_host_pages=1000, min_pool_pages=10)
    staging = StagingBuffers(deep, slots, STAGING_DEPTH, "cpu").nbytes  # the buffers the engine would allocate
    assert slots and pool * page + staging <= budget and staging <= 0.25 * budget
    assert split_budget(shallow, budget, None, 1000, 10)[1] == {}  # 4 layers: staging would cost too much
    assert split_budget(deep, budget, 0, 1000, 10) == (100, {})  # off: the pool has it all
    assert split_budget(deep, budget, None, 0, 10) == (100, {})  # no host tier, nothing to stream from
    assert split_budget(deep, budget, 50.0, 1000, 90) == (100, {})  # would leave the pool short of one request
    assert split_budget(deep, budget, 2.0, 3, 10)[1]["full_attention"] == 3 * KVCacheManager(deep, 0).managers[
        "full_attention"].ratio  # never more slots than the host tier has pages
    with pytest.raises(ValueError, match="stream_expansion"):
        split_budget(deep, budget, -1.0, 1000, 10)


def test_a_dropped_engine_takes_its_copy_thread_and_host_tier_with_it(tiny_model_dir):
    import gc
    import threading
    import weakref

    def copiers():  # by thread object: an earlier test's engine may let go of its own copier meanwhile
        return {t for t in threading.enumerate() if t.name == "kv-copier"}
    before = copiers()
    engine = LLMEngine(model=str(tiny_model_dir("llama")), kv_cache_memory="8MB", swap_space="8MB")
    engine.generate(workload()[:3], SamplingParams(max_tokens=3))
    engine.kv.evict_device_cache()
    engine.generate(workload()[:3], SamplingParams(max_tokens=3))  # the copy thread has worked
    mine = copiers() - before
    assert len(mine) == 1
    host = weakref.ref(engine.host_storage)
    del engine
    gc.collect()
    for _ in range(100):
        if not any(t.is_alive() for t in mine):
            break
        time.sleep(0.01)
    assert not any(t.is_alive() for t in mine) and host() is None


def test_copies_to_one_host_page_in_a_step_leave_the_last_one(tiny_model_dir):
    """A spilled host page can be evicted and spilled into again in the same step: the later copy wins."""
    from engine_backend.kv import PagedKVStorage, large_page_elems
    from engine_backend.kv.copier import KVCopier, _runs_by_type

    specs = specs_for_model(read_config(tiny_model_dir("llama")), 16, torch.float32)
    name, elems = specs[0].name, large_page_elems(specs)
    device, host = PagedKVStorage(specs, 4, elems, "cpu"), PagedKVStorage(specs, 4, elems, "cpu", host_tier=True)
    for d in range(4):
        device.type_pages[name][d].fill_(d + 1)
    outs = [(name, 0, 2), (name, 3, 1), (name, 1, 2)]
    # one index_copy_ per run, and its winner among duplicate indices is undefined: no run repeats a page
    assert _runs_by_type(outs) == [(name, [(3, 1), (1, 2)])]
    KVCopier(specs, device, host, None, "cpu").start(outs, []).finish()
    assert (host.type_pages[name][2] == 2).all() and (host.type_pages[name][1] == 4).all()

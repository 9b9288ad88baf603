"""The engine against its oracle: transformers' greedy generate on the same tiny checkpoint."""
import pytest
import torch

from engine_backend import LLMEngine, SamplingParams
from engine_backend.testing import HF_ARCHS, make_tiny_model

transformers = pytest.importorskip("transformers")

MAX_NEW = 12
PREFIX = ("Classify the sentiment of this beer review as positive or negative. The review follows: "
          "The beer pours a deep amber color with a thick head that lingers. ")
ROWS = ["Aroma of caramel malt and toffee.", "Flat and sour, a drain pour.", "Crisp, clean, refreshing finish.",
        "Aroma of caramel malt and dried fruit.", "Thin body, watery, no hop character at all."]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    made = {}

    def get(arch, **overrides):
        key = (arch, repr(sorted(overrides.items())))
        if key not in made:
            made[key] = make_tiny_model(root / f"{arch}-{len(made)}", arch=arch, **overrides)
        return made[key]
    return get


_reference_cache = {}


def reference(path, prompt_ids, max_new=MAX_NEW):
    """transformers greedy continuation of each prompt, one at a time (no padding effects)."""
    key = str(path)
    if key not in _reference_cache:
        _reference_cache[key] = (transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), {})
    model, memo = _reference_cache[key]
    outs = []
    for ids in prompt_ids:
        k = (tuple(ids), max_new)
        if k not in memo:
            with torch.no_grad():
                g = model.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False,
                                   pad_token_id=0, attention_mask=torch.ones(1, len(ids), dtype=torch.long))
            memo[k] = g[0, len(ids):].tolist()
        outs.append(memo[k])
    return outs


def prompts_for(engine):
    """Shared-prefix prompts, one longer than the sliding window, one a prefix of another."""
    long_tail = " ".join(ROWS) * 2
    texts = [PREFIX + r for r in ROWS] + [PREFIX + long_tail, PREFIX]
    return texts


@pytest.mark.parametrize("arch", HF_ARCHS)
@pytest.mark.parametrize("prefix_caching", [True, False])
def test_greedy_matches_transformers(checkpoints, arch, prefix_caching):
    path = checkpoints(arch)
    engine = LLMEngine(model=str(path), kv_cache_memory="32MB", enable_prefix_caching=prefix_caching,
                       max_num_batched_tokens=64)  # small budget: chunked prefill mixed with decodes
    texts = prompts_for(engine)
    window = engine.config.sliding_window
    if window:
        assert max(len(engine.tokenizer.encode(t)) for t in texts) > window
    outs = engine.generate(texts, SamplingParams(max_tokens=MAX_NEW))
    ref = reference(path, [o.prompt_token_ids for o in outs])
    for o, r in zip(outs, ref):
        assert o.token_ids == r, f"{arch}: engine {o.token_ids} != transformers {r}"
    # one at a time, a second pass over a warm cache, must also be exact
    single = [engine.generate([t], SamplingParams(max_tokens=MAX_NEW))[0].token_ids for t in texts[:2]]
    assert single == ref[:2]
    stats = engine.stats()
    if prefix_caching:
        assert stats["cached_prompt_tokens"] > 0
    else:
        assert stats["cached_prompt_tokens"] == 0
    assert stats["kv_pages_used"] == 0
    engine.reset_prefix_cache()
    assert engine.kv.pool.num_free == engine.kv.pool.num_pages


def test_llama3_rope_scaling_matches(checkpoints):
    path = checkpoints("llama", rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                              "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    engine = LLMEngine(model=str(path), kv_cache_memory="16MB")
    outs = engine.generate([PREFIX + r for r in ROWS[:3]], SamplingParams(max_tokens=MAX_NEW))
    assert [o.token_ids for o in outs] == reference(path, [o.prompt_token_ids for o in outs])


def test_preemption_and_eviction_keep_outputs_exact(checkpoints):
    path = checkpoints("gemma3_text")
    probe = LLMEngine(model=str(path), kv_cache_memory="32MB", max_model_len=256)
    one = probe.kv.large_pages_for_one_request(256) * probe.stats()["kv_page_bytes"]
    # room for about two requests: many prompts force preemptions and prefix-cache evictions
    engine = LLMEngine(model=str(path), kv_cache_memory=int(one * 1.5), max_model_len=256,
                       max_num_batched_tokens=48)
    texts = [PREFIX + r + " " + ROWS[(i + 1) % 5] * (i % 3) for i, r in enumerate(ROWS * 2)]
    outs = engine.generate(texts, SamplingParams(max_tokens=MAX_NEW))
    assert [o.token_ids for o in outs] == reference(path, [o.prompt_token_ids for o in outs])
    s = engine.stats()
    assert s["preemptions"] > 0 and s["cached_prompt_tokens"] > 0
    assert s["kv_pages_used"] == 0


def test_hetero_page_sizes_match_dense_reference(checkpoints):
    from engine_backend.loader import load_model
    from engine_backend.models.dense_attention import DenseAttention

    path = checkpoints("llmsql_hetero")
    engine = LLMEngine(model=str(path), kv_cache_memory="16MB", max_num_batched_tokens=40)
    page_sizes = {s.name: s.page_bytes for s in engine.kv.specs}
    assert len(set(page_sizes.values())) == len(page_sizes) > 1, page_sizes
    texts = prompts_for(engine)
    outs = engine.generate(texts, SamplingParams(max_tokens=8, ignore_eos=True))
    model = load_model(str(path))
    for o in outs:
        ids = list(o.prompt_token_ids)
        for _ in range(8):  # full recompute each step: no cache at all
            with torch.no_grad():
                h = model(torch.tensor(ids), torch.arange(len(ids)), DenseAttention(model.config))
            ids.append(int(model.compute_logits(h[-1:]).argmax(-1)))
        assert o.token_ids == ids[len(o.prompt_token_ids):]
    assert engine.stats()["cached_prompt_tokens"] > 0


def test_sliding_window_pages_are_released(checkpoints):
    path = checkpoints("gemma3_text")
    engine = LLMEngine(model=str(path), kv_cache_memory="32MB", enable_prefix_caching=False,
                       max_num_batched_tokens=16)
    prompt = " ".join(ROWS) * 4
    rid = engine.add_request(prompt, SamplingParams(max_tokens=40, ignore_eos=True))
    seq = engine._seqs[rid]
    sliding = [s for s in engine.kv.specs if s.window]
    assert sliding
    peak_live = 0
    while engine.has_unfinished_requests():
        engine.step()
        if seq.block_tables:
            for s in sliding:
                live = sum(p >= 0 for p in seq.block_tables[s.name])
                peak_live = max(peak_live, live)
    n_tokens = len(seq.token_ids)
    spec = sliding[0]
    assert n_tokens > 3 * spec.window
    # never more than the window plus a chunk's worth of blocks
    assert peak_live <= (spec.window + 16) // spec.block_size + 2


def test_choices_constrain_output(checkpoints):
    engine = LLMEngine(model=str(checkpoints("qwen3")), kv_cache_memory="16MB")
    labels = ["positive", "negative", "neutral", "pos"]
    outs = engine.generate([PREFIX + r + " Answer:" for r in ROWS],
                           SamplingParams(max_tokens=1, choices=labels))
    assert all(o.text in labels and o.finish_reason == "stop" for o in outs), [o.text for o in outs]
    yes_no = engine.generate([PREFIX + r for r in ROWS], SamplingParams(choices=["yes", "no"], temperature=1.0,
                                                                       seed=3))
    assert all(o.text in ("yes", "no") for o in yes_no)


def test_sampling_controls(checkpoints):
    engine = LLMEngine(model=str(checkpoints("llama")), kv_cache_memory="16MB")
    p = PREFIX + ROWS[0]
    a = engine.generate([p] * 3, SamplingParams(max_tokens=10, temperature=1.0, seed=7, ignore_eos=True))
    assert a[0].token_ids == a[1].token_ids == a[2].token_ids  # same seed, same tokens, whatever the batch
    b = engine.generate([p], SamplingParams(max_tokens=10, temperature=1.0, top_k=1, ignore_eos=True))[0]
    greedy = engine.generate([p], SamplingParams(max_tokens=10, ignore_eos=True))[0]
    assert b.token_ids == greedy.token_ids  # top_k=1 is greedy
    assert len(greedy.token_ids) == 10 and greedy.finish_reason == "length"
    stop_tok = greedy.token_ids[3]
    s = engine.generate([p], SamplingParams(max_tokens=10, stop_token_ids=[stop_tok], ignore_eos=True))[0]
    assert s.token_ids == greedy.token_ids[:greedy.token_ids.index(stop_tok) + 1] and s.finish_reason == "stop"
    stop_str = greedy.text[4:8]
    if stop_str.strip():
        t = engine.generate([p], SamplingParams(max_tokens=10, stop=[stop_str], ignore_eos=True))[0]
        assert t.finish_reason == "stop" and stop_str not in t.text and greedy.text.startswith(t.text)
    ids = engine.tokenizer.encode(p)
    assert engine.generate([ids], SamplingParams(max_tokens=10, ignore_eos=True))[0].token_ids == greedy.token_ids


def test_bad_input(checkpoints, tmp_path):
    path = checkpoints("llama")
    engine = LLMEngine(model=str(path), kv_cache_memory="16MB", max_model_len=128)
    outs = engine.generate(["", PREFIX * 20, PREFIX + ROWS[0], [10**9]], SamplingParams(max_tokens=4))
    assert outs[0].finish_reason == "error" and "empty" in outs[0].error
    assert outs[1].finish_reason == "error" and "context" in outs[1].error
    assert outs[2].finish_reason in ("stop", "length") and outs[2].token_ids
    assert outs[3].finish_reason == "error"
    for bad in [dict(max_tokens=0), dict(temperature=-1), dict(top_p=0), dict(top_k=-2), dict(choices=[]),
                dict(choices=["a", "a"]), dict(stop=[""])]:
        with pytest.raises(ValueError):
            SamplingParams(**bad)
    with pytest.raises(ValueError, match="kv_cache_memory"):
        LLMEngine(model=str(path), kv_cache_memory="10KB")
    with pytest.raises(ValueError, match="memory size"):
        LLMEngine(model=str(path), kv_cache_memory="lots")
    from engine_backend.loader import CheckpointError
    with pytest.raises(CheckpointError, match="config.json"):
        LLMEngine(model=str(tmp_path))


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma2"])  # fused kernel, GQA, manual softcap path
def test_cascade_attention_over_a_shared_prefix_is_exact(checkpoints, arch):
    path = checkpoints(arch)
    engine = LLMEngine(model=str(path), kv_cache_memory="32MB", max_num_batched_tokens=512)
    texts = [PREFIX * 2 + r for r in ROWS] + [PREFIX * 2 + r + " Again." for r in ROWS]
    for t in texts:
        engine.add_request(t, SamplingParams(max_tokens=MAX_NEW))
    outs, cascaded = [], 0
    while engine.has_unfinished_requests():
        outs += engine.step()
        cascaded += sum(g.shared_pages is not None for m in engine.runner.attention.meta.values() for g in m.groups)
    assert cascaded > 0, "the shared prefix should be attended once per group"
    outs.sort(key=lambda o: int(o.request_id.split("-")[1]))
    assert [o.token_ids for o in outs] == reference(path, [o.prompt_token_ids for o in outs])


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_bfloat16_on_cpu_matches_transformers(checkpoints, arch):
    """bf16 runs end to end; one prompt at a time it takes the same kernels as transformers, so it matches.

    (With prefix hits or batching the reduction order differs, and bf16 rounding may flip near-ties:
    exactness there is asserted in float32 above.)
    """
    path = checkpoints(arch)
    engine = LLMEngine(model=str(path), dtype="bfloat16", kv_cache_memory="16MB", enable_prefix_caching=False)
    assert engine.dtype == torch.bfloat16 and engine.storage.buffer.dtype == torch.bfloat16
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    for text in [PREFIX + r for r in ROWS[:3]]:
        (o,) = engine.generate([text], SamplingParams(max_tokens=8))
        with torch.no_grad():
            g = hf.generate(torch.tensor([o.prompt_token_ids]), max_new_tokens=8, do_sample=False, pad_token_id=0)
        assert o.token_ids == g[0, len(o.prompt_token_ids):].tolist()

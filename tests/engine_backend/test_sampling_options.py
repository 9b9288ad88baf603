"""Logprobs, presence/frequency penalties and logit bias in the engine, against transformers on the same checkpoint:
logprobs are the model's own log-softmax; penalised greedy decoding equals a hand loop over transformers' logits,
with and without speculative drafts (whose rows must count the drafts before them)."""
from __future__ import annotations

import pytest
import torch
import transformers

from engine_backend import LLMEngine, SamplingParams
from engine_backend.spec.oracle import OracleProposer

PROMPTS = ["The brewery in the valley makes a pale ale with", "Rich coffee notes, lovely head, and",
           "Crisp and clean. Crisp and clean. Crisp and"]
SPECS = [None, "oracle"]


def speculative(spec, hf, model_dir, truth_of):
    """``"oracle"``: drafts that are the true continuation 90% of the time, so most are accepted and every row
    after the first decides tokens (a random model rarely agrees with n-gram drafts)."""
    if spec != "oracle":
        return None
    engine = LLMEngine(model_dir)
    truth = {tuple(ids): truth_of(ids) for ids in (engine.tokenizer.encode(p) for p in PROMPTS)}
    return {"method": OracleProposer(truth, 0.9, hf.config.vocab_size), "num_speculative_tokens": 4}


@pytest.fixture(scope="module")
def hf(model_dir):
    return transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def hf_log_softmax(hf, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)


def hf_penalised_greedy(hf, prompt_ids, n, presence, frequency, bias):
    ids = list(prompt_ids)
    for _ in range(n):
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0, -1].float()
        counts = torch.bincount(torch.tensor(ids[len(prompt_ids):], dtype=torch.long), minlength=logits.numel())
        counts = counts[:logits.numel()].float()
        logits = logits - frequency * counts - presence * (counts > 0).float()
        for t, b in bias.items():
            logits[t] += b
        ids.append(int(logits.argmax()))
    return ids[len(prompt_ids):]


@pytest.mark.parametrize("spec", SPECS)
def test_logprobs_are_the_models_log_softmax(model_dir, hf, spec):
    truth_of = lambda ids: hf_penalised_greedy(hf, ids, 10, 0.0, 0.0, {})  # noqa: E731
    engine = LLMEngine(model_dir, speculative=speculative(spec, hf, model_dir, truth_of))
    outs = engine.generate(PROMPTS, SamplingParams(max_tokens=10, logprobs=5, ignore_eos=True))
    if spec:
        assert engine.stats()["spec_accepted_tokens"] > 10
    for out in outs:
        assert len(out.logprobs) == len(out.token_ids) == 10
        ref = hf_log_softmax(hf, out.prompt_token_ids + out.token_ids)
        for pos, (tok, entry) in enumerate(zip(out.token_ids, out.logprobs)):
            row = ref[len(out.prompt_token_ids) - 1 + pos]
            assert entry.logprob == pytest.approx(float(row[tok]), abs=2e-4)
            top_ids = [t for t, _ in entry.top]
            assert top_ids == row.topk(5).indices.tolist()
            assert [lp for _, lp in entry.top] == pytest.approx(row.topk(5).values.tolist(), abs=2e-4)
            assert top_ids[0] == tok  # greedy takes the best


def test_logprobs_ignore_the_samplers_changes(model_dir):
    """Temperature, penalties and a choice constraint change what is sampled, not the reported distribution."""
    engine = LLMEngine(model_dir)
    plain, = engine.generate(PROMPTS[:1], SamplingParams(max_tokens=1, logprobs=3))
    hot, = engine.generate(PROMPTS[:1], SamplingParams(max_tokens=1, logprobs=3, temperature=0.5, seed=1,
                                                        frequency_penalty=1.0))
    assert [t for t, _ in hot.logprobs[0].top] == [t for t, _ in plain.logprobs[0].top]
    assert [lp for _, lp in hot.logprobs[0].top] == pytest.approx([lp for _, lp in plain.logprobs[0].top], abs=1e-4)
    choice, = engine.generate(PROMPTS[:1], SamplingParams(logprobs=0, choices=[" zzz", " qqq"]))
    assert choice.logprobs and all(e.top == [] for e in choice.logprobs)
    assert choice.logprobs[0].logprob <= plain.logprobs[0].top[0][1]


def test_no_logprobs_unless_asked(model_dir):
    out, = LLMEngine(model_dir).generate(PROMPTS[:1], SamplingParams(max_tokens=3))
    assert out.logprobs is None


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("presence,frequency", [(0.0, 1.5), (1.2, 0.0), (0.5, 0.8), (-1.0, 0.0)])
def test_penalised_greedy_matches_a_hand_loop(model_dir, hf, spec, presence, frequency):
    truth_of = lambda ids: hf_penalised_greedy(hf, ids, 16, presence, frequency, {})  # noqa: E731
    engine = LLMEngine(model_dir, speculative=speculative(spec, hf, model_dir, truth_of))
    params = SamplingParams(max_tokens=16, ignore_eos=True, presence_penalty=presence, frequency_penalty=frequency)
    for out in engine.generate(PROMPTS, params):
        assert out.token_ids == hf_penalised_greedy(hf, out.prompt_token_ids, 16, presence, frequency, {})
    if spec:
        assert engine.stats()["spec_accepted_tokens"] > 16


def test_penalties_change_a_repetitive_answer(model_dir):
    """The test above would pass if penalties did nothing on these prompts; they must not."""
    engine = LLMEngine(model_dir)
    plain = [o.token_ids for o in engine.generate(PROMPTS, SamplingParams(max_tokens=16, ignore_eos=True))]
    assert any(len(set(t)) < len(t) for t in plain), "the prompts should make the model repeat itself"
    penalised = [o.token_ids for o in engine.generate(PROMPTS, SamplingParams(max_tokens=16, ignore_eos=True,
                                                                              frequency_penalty=2.0))]
    assert penalised != plain


def test_logit_bias(model_dir, hf):
    engine = LLMEngine(model_dir)
    forced, = engine.generate(PROMPTS[:1], SamplingParams(max_tokens=4, ignore_eos=True, logit_bias={42: 100}))
    assert forced.token_ids == [42] * 4
    bias = {7: 4.0, 300: -100.0}
    out, = engine.generate(PROMPTS[1:2], SamplingParams(max_tokens=8, ignore_eos=True, logit_bias=bias))
    assert out.token_ids == hf_penalised_greedy(hf, out.prompt_token_ids, 8, 0.0, 0.0, bias)


@pytest.mark.parametrize("kwargs,needle", [
    ({"logprobs": 21}, "logprobs"), ({"logprobs": -1}, "logprobs"), ({"logprobs": True}, "logprobs"),
    ({"presence_penalty": 2.5}, "presence_penalty"), ({"frequency_penalty": "1"}, "frequency_penalty"),
    ({"logit_bias": {1: 101}}, "logit_bias"), ({"logit_bias": {-1: 1}}, "logit_bias"),
    ({"logit_bias": [1]}, "logit_bias"),
])
def test_bad_sampling_options(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        SamplingParams(**kwargs)


def test_logit_bias_beyond_the_vocabulary_is_rejected(model_dir):
    engine = LLMEngine(model_dir)
    with pytest.raises(ValueError, match="vocabulary"):
        engine.add_request("hi", SamplingParams(logit_bias={10**6: 1.0}))
    assert not engine.has_unfinished_requests()

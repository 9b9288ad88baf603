"""SmartSpec: speculation keeps greedy outputs exact and the sampling distribution intact, rolls rejected
KV back without leaks, publishes only verified blocks, and chooses k by goodput."""
import random
from collections import Counter

import pytest
import torch

from engine_backend import LLMEngine, SamplingParams
from engine_backend.kv import KVCacheManager, specs_for_model
from engine_backend.loader import read_config
from engine_backend.sampler import probabilities, sample
from engine_backend.sequence import Sequence
from engine_backend.server import render_metrics
from engine_backend.spec import Proposer, choose_lengths, expected_tokens, parse_options
from engine_backend.spec.oracle import OracleProposer
from engine_backend.spec.proposers import prompt_lookup
from test_admission import WrongProposer, assert_matches_oracle, assert_no_leak, one_torch_thread  # noqa: F401

ARCHS = ["llama", "qwen3", "gemma2"]
# repetitive prompts, so prompt lookup finds matches; repeated rows, so batch lookup has answers to offer
PROMPTS = ["The cat sat on the mat and the cat sat on the", "hello world hello world hello",
           "one two three one two three one two", "Extract the brewery: Barley Island Brewing. Answer:",
           "a b c d e f"] * 2


class FixedProposer(Proposer):
    """Always proposes the same tokens (for the distribution test)."""

    name = "fixed"

    def __init__(self, tokens):
        self.tokens = tokens

    def propose(self, seqs, ks):
        return [self.tokens[s.num_output_tokens:s.num_output_tokens + k] for s, k in zip(seqs, ks)]


def greedy_outputs(path, prompts, params, **engine_args):
    engine = LLMEngine(str(path), **engine_args)
    return engine.generate(prompts, params), engine


def oracle_for(path, prompts, params):
    """Each prompt's greedy continuation, for ``OracleProposer``."""
    outs, engine = greedy_outputs(path, prompts, params)
    return {tuple(o.prompt_token_ids): list(o.token_ids) for o in outs}, engine.config.vocab_size


def speculative_configs(path, draft):
    truth, vocab = oracle_for(path, PROMPTS, SamplingParams(max_tokens=24))
    return {
        "ngram": "ngram",
        "batch": {"method": "batch", "num_speculative_tokens": 3},
        "draft-self": {"method": "draft", "draft_model": str(path), "num_speculative_tokens": 4},
        "draft-small": {"method": "draft", "draft_model": str(draft)},
        "auto-all": {"method": ["ngram", "batch", "draft"], "draft_model": str(draft)},
        "oracle-0.7": {"method": OracleProposer(truth, 0.7, vocab, seed=1), "num_speculative_tokens": 5},
        "wrong": {"method": WrongProposer(), "num_speculative_tokens": 4},
    }


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_outputs_equal_transformers_with_every_proposer(tiny_model_dir, arch):
    path = tiny_model_dir(arch)
    draft = tiny_model_dir(arch, seed=1, num_hidden_layers=2)
    params = SamplingParams(max_tokens=24)
    plain, _ = greedy_outputs(path, PROMPTS, params)
    assert_matches_oracle(path, plain, "no speculation: ")
    for name, spec in speculative_configs(path, draft).items():
        outs, engine = greedy_outputs(path, PROMPTS, params, speculative=spec)
        for a, b in zip(plain, outs):
            assert a.token_ids == b.token_ids, f"{arch} {name} {b.request_id}"
        stats = engine.stats()
        if name in ("draft-self", "oracle-0.7", "wrong"):
            assert stats["spec_proposed_tokens"] > 0, name
        if name == "draft-self":  # the target as its own draft: every proposal is right
            assert stats["spec_accepted_tokens"] == stats["spec_proposed_tokens"], stats
        if name == "oracle-0.7":  # 5 drafts each right with p = 0.7 keep (0.7 + ... + 0.7**5) / 5 = 39% of them
            assert stats["spec_accepted_tokens"] > stats["spec_proposed_tokens"] * 0.3, stats
        assert stats["kv_pages_used"] == 0
        assert_no_leak(engine.kv)


def test_auto_stays_exact_under_preemption_and_tight_budgets(tiny_model_dir):
    """Drafts under KV pressure: chunk cuts trim them, preempted requests drop them, swaps carry only verified KV."""
    path = tiny_model_dir("llmsql_hetero")
    truth, vocab = oracle_for(path, PROMPTS, SamplingParams(max_tokens=40, ignore_eos=True))
    probe = LLMEngine(str(path), kv_cache_memory="8MB", max_model_len=128)
    one = probe.kv.large_pages_for_one_request(128) * probe.kv.large_page_bytes
    for extra in ({}, {"swap_space": one * 4, "preemption": "swap"}):
        outs, engine = greedy_outputs(path, PROMPTS, SamplingParams(max_tokens=40, ignore_eos=True),
                                      kv_cache_memory=int(one * 1.5), max_model_len=128, max_num_batched_tokens=16,
                                      block_size=4, speculative={"method": OracleProposer(truth, 0.6, vocab)}, **extra)
        for o in outs:
            assert o.token_ids == truth[tuple(o.prompt_token_ids)], (extra, o.request_id)
        assert engine.stats()["preemptions"] > 0
        assert_no_leak(engine.kv)


def cached_keys(engine):
    return {name: set(m.device.cached) for name, m in engine.kv.managers.items()}


def test_rollback_publishes_only_verified_blocks(tiny_model_dir):
    """Rejected drafts fill blocks with unverified tokens; none of them may reach the prefix cache."""
    path = tiny_model_dir("llama")
    params = SamplingParams(max_tokens=30, ignore_eos=True)
    plain, plain_engine = greedy_outputs(path, PROMPTS, params, block_size=4)
    for spec in ({"method": WrongProposer(), "num_speculative_tokens": 6}, "ngram"):
        outs, engine = greedy_outputs(path, PROMPTS, params, block_size=4, speculative=spec)
        assert [o.token_ids for o in outs] == [o.token_ids for o in plain]
        assert cached_keys(engine) == cached_keys(plain_engine)  # the same blocks, no unverified one
        assert_no_leak(engine.kv)


def test_truncate_releases_the_pages_past_the_kept_tokens(tiny_model_dir):
    path = tiny_model_dir("llmsql_hetero")
    kv = KVCacheManager(specs_for_model(read_config(path), 4, torch.float32), 64)
    seq = Sequence("r", list(range(10, 20)), SamplingParams(), 0)
    kv.match_prefix(seq)
    assert kv.allocate(seq, 10)
    seq.num_computed = 10
    kv.commit(seq)  # blocks 0 and 1 are published
    assert kv.allocate(seq, 7)  # three drafts and more: blocks up to 4
    used = kv.pool.num_used
    kv.truncate(seq, 12)
    assert all(len(t) == 3 for t in seq.block_tables.values())
    assert seq.num_computed == 10
    assert kv.pool.num_used <= used
    with pytest.raises(ValueError, match="published"):
        kv.truncate(seq, 7)
    kv.free(seq)
    assert_no_leak(kv)


def test_stops_max_tokens_and_choices_hold_under_speculation(tiny_model_dir):
    path = tiny_model_dir("qwen3")
    cases = [SamplingParams(max_tokens=5), SamplingParams(max_tokens=1), SamplingParams(max_tokens=20, stop=["e"]),
             SamplingParams(choices=["yes please", "yes sir", "no thanks"]), SamplingParams(max_tokens=7, ignore_eos=True)]
    for params in cases:
        plain, _ = greedy_outputs(path, PROMPTS, params)
        outs, engine = greedy_outputs(path, PROMPTS, params,
                                      speculative={"method": "draft", "draft_model": str(path), "num_speculative_tokens": 8})
        assert [(o.token_ids, o.text, o.finish_reason) for o in outs] == \
            [(o.token_ids, o.text, o.finish_reason) for o in plain], params
        for o in outs:
            assert len(o.token_ids) <= params.max_tokens or params.choices
            if params.choices:
                assert o.text in params.choices


def test_sampled_tokens_keep_the_target_distribution():
    """Rejection sampling of point proposals: the first token is distributed as p, and after an accepted draft the
    next one as the next row's p (chi-square at the 0.1% level, fixed seeds, a 6-token vocabulary)."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, generator=gen) * 1.5
    params = SamplingParams(temperature=0.8, top_p=0.95)
    p0 = probabilities(logits[0], params.temperature, params.top_k, params.top_p)
    p1 = probabilities(logits[1], params.temperature, params.top_k, params.top_p)
    drafts = [int(p0.argsort()[-2]), int(p1.argsort()[0])]  # a likely first guess, an unlikely second one
    seq = Sequence("r", [1, 2, 3], params, 0)
    seq.generator = torch.Generator().manual_seed(1)
    first, second = Counter(), Counter()
    n = 6000
    for _ in range(n):
        seq.draft_token_ids = list(drafts)
        (tokens,) = sample(logits.clone(), [seq], {})
        first[tokens[0]] += 1
        if tokens[0] == drafts[0]:
            second[tokens[1]] += 1
    assert chi_square(first, p0, n) < CHI2_999[5]
    assert chi_square(second, p1, sum(second.values())) < CHI2_999[5]


CHI2_999 = {5: 20.52, 2: 13.82}  # chi-square critical values at p = 0.001


def chi_square(counts: Counter, probs: torch.Tensor, n: int) -> float:
    expected = probs * n
    keep = expected > 0
    assert all(counts[t] == 0 for t in range(len(probs)) if not keep[t]), "a token outside top-p was sampled"
    return float(sum((counts[t] - expected[t]) ** 2 / expected[t] for t in range(len(probs)) if keep[t]))


def test_engine_sampling_with_speculation_matches_without(tiny_model_dir):
    """End to end at temperature 1: the choice distribution with drafts equals the one without (two-sample
    chi-square over 3 choices), with a proposer that always guesses the first choice."""
    path = tiny_model_dir("llama")
    choices = ["red apple pie", "red rose", "blue sky"]
    first = LLMEngine(str(path)).tokenizer.encode(choices[0], add_special_tokens=False)
    counts = []
    for spec in (None, {"method": FixedProposer(first), "num_speculative_tokens": 3}):
        engine = LLMEngine(str(path), speculative=spec, seed=5)
        outs = engine.generate(["Pick one:"] * 600, SamplingParams(temperature=1.0, choices=choices))
        counts.append(Counter(o.text for o in outs))
        if spec:
            assert engine.stats()["spec_proposed_tokens"] > 0
    a, b = counts
    stat = 0.0
    for c in choices:
        total = a[c] + b[c]
        if total:
            stat += (a[c] - total / 2) ** 2 / (total / 2) + (b[c] - total / 2) ** 2 / (total / 2)
    assert stat < CHI2_999[2], counts


def test_prompt_lookup_finds_the_latest_earlier_match_of_the_longest_suffix():
    def by_hand(tokens, k):
        for n in (3, 2, 1):
            for i in range(len(tokens) - n - 1, -1, -1):
                if len(tokens) > n and tokens[i:i + n] == tokens[-n:]:
                    return tokens[i + n:i + n + k]
        return []
    rng = random.Random(0)
    for _ in range(3000):  # ids whose bytes overlap across token boundaries (256, 65536) included
        tokens = [rng.choice([0, 1, 2, 3, 256, 257, 65536]) for _ in range(rng.randint(1, 30))]
        k = rng.randint(1, 5)
        assert prompt_lookup(tokens, k) == by_hand(tokens, k), tokens
    assert prompt_lookup([5, 6, 7, 8, 9, 6, 7], 2) == [8, 9]


def test_choose_lengths_follows_goodput():
    # a step costs the same whatever its tokens: every request takes all it may
    assert choose_lengths([0.9, 0.5], [4, 4], lambda total, k_max, n: 1.0) == [4, 4]
    # a step costs in proportion to its tokens (100 requests): speculating never pays
    assert choose_lengths([0.5] * 100, [4] * 100, lambda total, k_max, n: 100 + total) == [0] * 100
    # in between: the better guesser gets more drafts, the poor one none
    ks = choose_lengths([0.95, 0.1], [8, 8], lambda total, k_max, n: 1.0 + 0.15 * total)
    assert ks[0] > 2 and ks[1] == 0
    # a request's first draft is dear (it leaves the decode call), further ones cheap: drafts concentrate
    ks = choose_lengths([0.9] * 10, [8] * 10, lambda total, k_max, n: 1.0 + 0.01 * total + 0.3 * n, max_total=24)
    assert sum(ks) <= 24 and max(ks) == 8 and ks.count(0) >= 7
    assert expected_tokens(0.5, 2) == pytest.approx(1.75)


def test_auto_turns_speculation_off_for_a_proposer_that_is_always_wrong(tiny_model_dir):
    path = tiny_model_dir("llama")
    engine = LLMEngine(str(path), speculative={"method": WrongProposer(), "num_speculative_tokens": "auto"})
    engine.generate(PROMPTS * 4, SamplingParams(max_tokens=40, ignore_eos=True))
    stats = engine.stats()
    assert stats["spec_by_proposer"]["wrong"]["acceptance_estimate"] < 0.1
    assert stats["spec_mean_k"] < 0.5, stats  # tried early, then (nearly) off


def test_stats_and_metrics_name_the_speculation_counters(tiny_model_dir):
    path = tiny_model_dir("llama")
    engine = LLMEngine(str(path), speculative={"method": ["ngram", "batch"], "num_speculative_tokens": 2})
    engine.generate(PROMPTS, SamplingParams(max_tokens=12))
    stats = engine.stats()
    by = stats["spec_by_proposer"]
    assert set(by) == {"ngram", "batch"}
    assert stats["spec_proposed_tokens"] == sum(v["proposed_tokens"] for v in by.values())
    assert stats["spec_accepted_tokens"] == sum(v["accepted_tokens"] for v in by.values())
    assert 0 < stats["spec_mean_k"] <= 2
    text = render_metrics(stats, Counter())
    for name in ("llm_sql_spec_proposed_tokens_total", "llm_sql_spec_accepted_tokens_total", "llm_sql_spec_mean_k",
                 'llm_sql_spec_proposer_accepted_tokens_total{proposer="ngram"}'):
        assert name in text
    plain = LLMEngine(str(path)).stats()
    assert plain["spec_proposed_tokens"] == 0 and plain["spec_by_proposer"] == {}


@pytest.mark.parametrize("bad, message", [
    ({"method": "medusa"}, "method must be one of"),
    ({"method": "draft"}, "needs draft_model"),
    ({"method": "ngram", "num_speculative_tokens": -1}, "num_speculative_tokens"),
    ({"method": "ngram", "num_speculative_tokens": "many"}, "num_speculative_tokens"),
    ({"method": "ngram", "k": 3}, "unknown speculative option"),
    ({"method": []}, "empty"),
    (42, "must be a dict"),
])
def test_malformed_speculative_options_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        parse_options(bad)


def test_a_draft_with_another_vocabulary_is_refused(tiny_model_dir):
    path, other = tiny_model_dir("llama"), tiny_model_dir("qwen3")
    with pytest.raises(ValueError, match="vocabulary"):
        LLMEngine(str(path), speculative={"method": "draft", "draft_model": str(other)})


def test_batch_lookup_proposes_what_other_rows_answered(tiny_model_dir):
    """Rows that finish early teach the later ones: identical prompts admitted one after another."""
    path = tiny_model_dir("llama")
    engine = LLMEngine(str(path), max_num_seqs=2, speculative={"method": "batch", "num_speculative_tokens": 8})
    outs = engine.generate([PROMPTS[0]] * 8, SamplingParams(max_tokens=16, ignore_eos=True))
    assert len({tuple(o.token_ids) for o in outs}) == 1
    stats = engine.stats()["spec_by_proposer"]["batch"]
    assert stats["accepted_tokens"] >= 6 * 14 * 0.9, stats  # rows 3-8 take their whole answer from rows 1-2


def test_random_seeded_requests_are_reproducible_with_speculation(tiny_model_dir):
    path = tiny_model_dir("llama")
    params = SamplingParams(temperature=0.9, seed=3, max_tokens=16)
    spec = {"method": "draft", "draft_model": str(path), "num_speculative_tokens": 3}
    a = LLMEngine(str(path), speculative=spec).generate(PROMPTS[:3], params)
    b = LLMEngine(str(path), speculative=spec).generate(PROMPTS[:3] + PROMPTS[5:], [params] * 3 + [
        SamplingParams(temperature=0.5, max_tokens=4)] * 5)
    assert [o.token_ids for o in a] == [o.token_ids for o in b[:3]]

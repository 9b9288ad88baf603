"""Jenga's bookkeeping on its own: heterogeneous pages, packing, prefix rules, no leaks."""
import random

import torch

from engine_backend.kv import (NULL_PAGE, FullAttentionSpec, KVCacheManager, PagedKVStorage, SlidingWindowSpec,
                               large_page_elems)
from engine_backend.sampling_params import SamplingParams
from engine_backend.sequence import Sequence

B = 4


def hetero_specs(window=8):
    full = FullAttentionSpec("full_attention", (0, 3), num_kv_heads=2, head_dim=8, block_size=B, dtype=torch.float32)
    slide = SlidingWindowSpec("sliding_attention", (1, 2, 4), num_kv_heads=1, head_dim=4, block_size=B,
                              dtype=torch.float32, window=window)
    return [full, slide]


def seq(rid, tokens):
    return Sequence(rid, list(tokens), SamplingParams(), 0)


def run_prefill(kv, s, chunk=1000):
    """Allocate and 'compute' the whole prompt in chunks, as the scheduler would."""
    kv.match_prefix(s)
    while s.num_computed < len(s.token_ids):
        n = min(chunk, len(s.token_ids) - s.num_computed)
        assert kv.allocate(s, n)
        s.num_computed += n
        kv.commit(s)


def assert_no_leak(kv):
    kv.reset_prefix_cache()
    assert kv.pool.num_free == kv.pool.num_pages
    for a in kv.allocators.values():
        assert a.ref == {} and a.num_large_pages == 0 and not a.cached


def test_large_page_is_lcm_and_types_carve_disjoint_memory():
    specs = hetero_specs()
    full, slide = specs
    assert full.page_elems == 2 * 2 * B * 2 * 8 and slide.page_elems == 3 * 2 * B * 1 * 4
    assert full.page_elems != slide.page_elems
    large = large_page_elems(specs)
    assert large % full.page_elems == 0 and large % slide.page_elems == 0
    kv = KVCacheManager(specs, num_large_pages=16)
    seqs = [seq(f"r{i}", range(100 * i, 100 * i + 20)) for i in range(4)]
    for s in seqs:
        run_prefill(kv, s, chunk=20)
    # every live small page lies in a large page owned by its own type, and no byte range overlaps
    spans = []
    for spec in specs:
        alloc = kv.allocators[spec.name]
        for page in alloc.ref:
            assert kv.pool.owner[page // alloc.ratio] == spec.name
            spans.append((page * spec.page_elems, (page + 1) * spec.page_elems))
    spans.sort()
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    # the physical views really are that memory
    storage = PagedKVStorage(specs, 16, large, "cpu")
    k, _ = storage.layer_kv[1]
    k[3].fill_(7.0)
    page3 = storage.buffer[3 * slide.page_elems:4 * slide.page_elems]
    assert (page3 == 7.0).sum() == B * 1 * 4
    for s in seqs:
        kv.free(s)
    assert_no_leak(kv)


def test_request_pages_are_packed_into_its_own_large_pages():
    full = FullAttentionSpec("full_attention", (0,), 1, 4, B, torch.float32)
    tiny = SlidingWindowSpec("sliding_attention", (1,), 1, 2, B, torch.float32, window=64)  # 4 small pages per large page
    kv = KVCacheManager([full, tiny], num_large_pages=32)
    alloc = kv.allocators["sliding_attention"]
    assert alloc.ratio == 2
    a, b = seq("a", range(0, 8 * B)), seq("b", range(1000, 1000 + 8 * B))
    kv.match_prefix(a), kv.match_prefix(b)
    for _ in range(8):  # interleaved growth, one block each per step
        assert kv.allocate(a, B)
        a.num_computed += B
        assert kv.allocate(b, B)
        b.num_computed += B
    larges_a = {p // alloc.ratio for p in a.block_tables["sliding_attention"]}
    larges_b = {p // alloc.ratio for p in b.block_tables["sliding_attention"]}
    assert not larges_a & larges_b, "interleaved requests must not share large pages"
    larges_a_full = set(a.block_tables["full_attention"])  # full pages fill a large page each (ratio 1)
    assert kv.allocators["full_attention"].ratio == 1
    used = kv.pool.num_used
    kv.free(a)  # nothing was published to the prefix cache, so a's large pages all go back
    assert kv.pool.num_used == used - len(larges_a) - len(larges_a_full)
    kv.free(b)
    assert_no_leak(kv)


def test_sliding_window_releases_pages_during_prefill_and_decode():
    kv = KVCacheManager(hetero_specs(window=8), num_large_pages=64)
    s = seq("a", range(40))
    run_prefill(kv, s, chunk=8)
    table = s.block_tables["sliding_attention"]
    live = [p for p in table if p != NULL_PAGE]
    # the next query at position 40 sees positions 33..40: blocks 8..9 (block 10 is not allocated yet)
    assert table[:8] == [NULL_PAGE] * 8 and len(live) == 2
    assert all(p != NULL_PAGE for p in s.block_tables["full_attention"])
    for _ in range(12):  # decode
        s.token_ids.append(1)
        assert kv.allocate(s, 1)
        s.num_computed += 1
        kv.commit(s)
        assert sum(p != NULL_PAGE for p in s.block_tables["sliding_attention"]) <= 8 // B + 1
    kv.free(s)
    assert_no_leak(kv)


def test_prefix_hit_rules_per_type():
    kv = KVCacheManager(hetero_specs(window=8), num_large_pages=64)
    a = seq("a", range(33))  # 8 full blocks + 1 token
    run_prefill(kv, a)
    kv.free(a)
    b = seq("b", list(range(32)) + [99, 98])
    assert kv.match_prefix(b) == 32
    table = b.block_tables["sliding_attention"]
    # sliding needs only the blocks the query at 32 can see (positions 25..31 -> blocks 6, 7)
    assert table[:6] == [NULL_PAGE] * 6 and NULL_PAGE not in table[6:]
    assert NULL_PAGE not in b.block_tables["full_attention"]
    kv.free(b)
    # drop a full-attention block in the middle: full attention can only hit before it
    full = kv.allocators["full_attention"]
    key3 = seq("x", range(33)).block_keys(B, 4)[3]
    page3 = full.cached[key3]
    full.evictable.move_to_end(page3, last=False)
    full._evict_one()
    c = seq("c", range(33))
    assert kv.match_prefix(c) == 3 * B
    kv.free(c)
    # a prompt that is entirely cached still leaves its last token to compute
    d = seq("d", range(32))
    assert kv.match_prefix(d) == 3 * B
    kv.free(d)
    assert_no_leak(kv)


def test_block_keys_are_a_sha256_chain():
    """A key is sha256(parent key + the block's int64 token ids): it names the whole prefix, and (unlike
    Python's unseeded hash of int tuples) no client can craft two prefixes that share one."""
    import hashlib
    from array import array

    keys = seq("x", range(40)).block_keys(B, 2)
    first = hashlib.sha256(array("q", range(B)).tobytes()).digest()
    assert keys == [first, hashlib.sha256(first + array("q", range(B, 2 * B)).tobytes()).digest()]
    other = seq("y", [1] + list(range(1, 40))).block_keys(B, 2)  # differs in block 0 only
    assert other[0] != keys[0] and other[1] != keys[1]  # every later key differs too
    assert seq("z", range(40)).block_keys(B, 2) == keys


def test_sliding_hit_needs_the_window_blocks():
    kv = KVCacheManager(hetero_specs(window=8), num_large_pages=64)
    a = seq("a", range(33))
    run_prefill(kv, a)
    kv.free(a)
    slide = kv.allocators["sliding_attention"]
    keys = seq("x", range(33)).block_keys(B, 8)
    # evict the sliding block 7 (inside the window at 32): the hit must fall back to where
    # the window is whole again: at 28 the query sees 21..27 = blocks 5, 6 -> cached
    page7 = slide.cached[keys[7]]
    slide.evictable.move_to_end(page7, last=False)
    slide._evict_one()
    b = seq("b", range(33))
    assert kv.match_prefix(b) == 7 * B
    kv.free(b)
    assert_no_leak(kv)


def test_allocation_is_all_or_nothing_and_evicts_cached_pages():
    specs = hetero_specs(window=8)
    kv = KVCacheManager(specs, num_large_pages=6)
    for i in range(10):  # far more prompts than the pool holds: old cached blocks get evicted
        s = seq(f"r{i}", range(1000 * i, 1000 * i + 20))
        run_prefill(kv, s, chunk=20)
        kv.free(s)
    big = seq("big", range(10_000, 10_000 + 4000))
    kv.match_prefix(big)
    assert not kv.allocate(big, 4000)
    assert big.block_tables["full_attention"] == [] and big.block_tables["sliding_attention"] == []
    assert all(a.num_used_pages == 0 for a in kv.allocators.values()), "a failed allocation keeps nothing"
    small = seq("small", range(20_000, 20_020))  # evicting the cached pages makes room
    kv.match_prefix(small)
    assert kv.allocate(small, 20)
    kv.free(small)
    kv.free(big)
    assert_no_leak(kv)


def test_random_mix_never_leaks():
    rng = random.Random(0)
    kv = KVCacheManager(hetero_specs(window=8), num_large_pages=12)
    live = []
    for step in range(600):
        op = rng.random()
        if op < 0.4 or not live:
            base = rng.choice([0, 0, 500, 900])  # shared prefixes
            s = seq(f"s{step}", list(range(base, base + rng.randint(1, 30))) + [rng.randint(0, 50)])
            kv.match_prefix(s)
            n = rng.randint(1, len(s.token_ids) - s.num_computed)
            if kv.allocate(s, n):
                s.num_computed += n
                kv.commit(s)
                live.append(s)
            else:
                kv.free(s)
        elif op < 0.8:
            s = rng.choice(live)
            if s.num_computed == len(s.token_ids):
                s.token_ids.append(rng.randint(0, 50))
            n = rng.randint(1, len(s.token_ids) - s.num_computed)
            if kv.allocate(s, n):
                s.num_computed += n
                kv.commit(s)
            else:  # preempt
                live.remove(s)
                kv.free(s)
        else:
            s = live.pop(rng.randrange(len(live)))
            kv.free(s)
        # invariant: pages in tables have refs; pool accounting matches allocators
        held = sum(a.num_large_pages for a in kv.allocators.values())
        assert held == kv.pool.num_used
        for a in kv.allocators.values():  # the reclaim index lists exactly the large pages with nothing in use
            assert set(a._idle) == {lp for lp, n in a._in_use.items() if n == 0}
    for s in live:
        kv.free(s)
    assert_no_leak(kv)

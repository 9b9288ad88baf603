"""Jenga KV capacity: how many long requests fit in a fixed KV budget, against a uniform allocator.

What it measures
  1. Capacity (KV manager only, no forward pass). A Gemma-3-style checkpoint (5 sliding : 1 full layers,
     sliding_window=256) and a fixed KV budget (256 MiB by default). Requests of 2,048 distinct tokens are
     admitted one by one and prefilled in 512-token chunks exactly as the scheduler drives the manager
     (``match_prefix``, ``allocate``, ``num_computed += n``, ``commit``, which frees the sliding pages that left
     the window), until an allocation fails. The count admitted is the capacity.
       * Jenga: ``KVCacheManager(specs_for_model(config, block_size, dtype), budget // large_page_bytes)``.
       * Baseline, measured in the same run: a uniform allocator, i.e. a ``KVCacheManager`` with ONE ``KVSpec``
         holding every layer with ``window=None`` (every layer keeps every token, one page size: what an allocator
         without layer types does), with the same budget in bytes.
     Reported: requests that fit, KV bytes per request per layer type, the ratio Jenga / uniform.
  2. End to end (Jenga only: the engine has no uniform mode). The real ``LLMEngine`` on the same geometry with a
     tiny hidden size (forward cost follows the hidden size, not the KV geometry) and a smaller budget (64 MiB
     by default, so the run stays short on CPU), ``max_num_batched_tokens=512``. It is given 2x its capacity in
     requests of 2,048 tokens in all: a prompt of ``2048 - D`` tokens and ``max_tokens=D`` (``ignore_eos``).
     D (256 by default) is long enough that requests are still running when the next ones are admitted, so
     memory, not the 512-token step budget, bounds concurrency: with max_tokens=4 each request would be done
     4 steps after its prefill and only ~2 would ever run at once, whatever the allocator. Reported: peak
     ``len(engine.scheduler.running)`` after a step and preemptions. The same requests also go through the
     engine's own ``Scheduler`` with the model replaced by a stub ("scheduler replay"), for Jenga (a cross-check:
     it must match the engine) and for the uniform allocator (the baseline the engine cannot run).
  3. Page waste with heterogeneous page sizes. An ``llmsql_hetero`` checkpoint whose sliding layers have another
     head_dim and kv-head count than its full layers, so the small pages differ in size and the large page is
     their least common multiple. A mix of requests (varied prompt and output lengths, half of them sharing one
     of four 256-token prefixes) runs through the scheduler replay and the real engine. After every step:
     waste = (bytes of large pages held - bytes of small pages in use or cached) / bytes of large pages held,
     reported at peak memory and averaged over the run, against a naive scheme that pads every page to the
     largest page size (same pages, each taking max page bytes).

``--quick`` (a smoke run of a few seconds): 64 MiB for the capacity count, 8 MiB and 32 output tokens for the
engine run, 60 requests in the mix (8 through the engine). ``--skip-e2e`` leaves the real engine out.

The model is random: it answers nonsense; only the memory mechanics are real. Timings are printed but are not
what this benchmark measures (CPU machines shared with other work).

Usage: python bench/jenga_capacity.py [--quick] [--out bench/results] [--budget-mb 256] ...
"""
from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (str(REPO), str(REPO / "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)

import torch  # noqa: E402

from _common import DEFAULT_OUT, log, mib, print_table, pyplot, save_png, write_json  # noqa: E402
from engine_backend.kv import FullAttentionSpec, KVCacheManager, KVSpec, large_page_elems, specs_for_model  # noqa: E402
from engine_backend.loader import read_config  # noqa: E402
from engine_backend.sampling_params import SamplingParams  # noqa: E402
from engine_backend.scheduler import Scheduler  # noqa: E402
from engine_backend.sequence import Sequence  # noqa: E402
from engine_backend.testing import make_tiny_model  # noqa: E402

NAME = "jenga_capacity"
MiB = 2**20


# ---- specs --------------------------------------------------------------------------------------------------
def uniform_specs(config, block_size: int, dtype: torch.dtype) -> list[KVSpec]:
    """The baseline: one page type for every layer, no window (every layer keeps every token)."""
    geoms = {(config.num_kv_heads(i), config.head_dim(i)) for i in range(config.num_layers)}
    if len(geoms) != 1:
        raise ValueError("the uniform baseline needs one attention geometry for all layers")
    (heads, head_dim), = geoms
    return [FullAttentionSpec("uniform", tuple(range(config.num_layers)), heads, head_dim, block_size, dtype)]


def page_geometry(specs: list[KVSpec]) -> dict:
    lp = large_page_elems(specs) * specs[0].dtype.itemsize
    return {
        "large_page_bytes": lp,
        "types": {s.name: {"layers": len(s.layers), "window": s.window, "kv_heads": s.num_kv_heads,
                           "head_dim": s.head_dim, "small_page_bytes": s.page_bytes,
                           "small_pages_per_large_page": lp // s.page_bytes} for s in specs},
    }


# ---- 1. capacity --------------------------------------------------------------------------------------------
def distinct_prompt(rng: random.Random, n: int, vocab: int, index: int) -> list[int]:
    """Random tokens whose first two encode ``index``: no two prompts share even their first block."""
    ids = [rng.randrange(3, vocab) for _ in range(n)]
    ids[0], ids[1] = 3 + index % (vocab - 3), 3 + (index // (vocab - 3)) % (vocab - 3)
    return ids


def fill_to_capacity(specs: list[KVSpec], budget: int, request_tokens: int, chunk: int, vocab: int,
                     seed: int = 0, limit: int = 1_000_000) -> dict:
    """Admit distinct requests one by one, prefilled in ``chunk``-token chunks, until an allocation fails."""
    lp = large_page_elems(specs) * specs[0].dtype.itemsize
    kv = KVCacheManager(specs, budget // lp)
    rng = random.Random(seed)
    held: list[Sequence] = []
    while len(held) < limit:
        i = len(held)
        seq = Sequence(f"r{i}", distinct_prompt(rng, request_tokens, vocab, i), SamplingParams(max_tokens=1), i)
        assert kv.match_prefix(seq) == 0, "prompts were meant to be distinct"
        ok = True
        while seq.num_computed < request_tokens:
            n = min(chunk, request_tokens - seq.num_computed)
            if not kv.allocate(seq, n):
                ok = False
                break
            seq.num_computed += n
            kv.commit(seq)
        if not ok:
            kv.free(seq)
            break
        held.append(seq)
    usage = kv.usage()
    count = len(held)
    per_type = {}
    for s in specs:
        t = usage["types"][s.name]
        per_type[s.name] = {
            "kv_bytes_per_request": t["used_bytes"] / count if count else 0.0,
            "pages_per_request": t["used_pages"] / count if count else 0.0,
            "cached_bytes_total": t["cached_bytes"],
        }
    used = sum(t["used_bytes"] for t in usage["types"].values())
    return {
        "requests_fit": count,
        "num_large_pages": kv.pool.num_pages,
        "large_page_bytes": lp,
        "budget_bytes_usable": kv.pool.num_pages * lp,
        "large_pages_used_at_capacity": kv.pool.num_used,
        "kv_bytes_per_request": used / count if count else 0.0,
        "held_bytes_per_request": kv.pool.num_used * lp / count if count else 0.0,
        "per_type": per_type,
    }


# ---- driving the scheduler: the real engine, or the same scheduler with a stub model ------------------------
class SchedulerReplay:
    """``LLMEngine.step`` without the model: the engine's Scheduler and a KVCacheManager, a dummy sampled token.

    With ``ignore_eos`` requests the engine's scheduling does not depend on the tokens the model samples, so a
    replay of the same requests must see the same running counts, preemptions and pages as the engine.
    """

    def __init__(self, specs: list[KVSpec], budget: int, max_num_seqs: int, max_num_batched_tokens: int):
        lp = large_page_elems(specs) * specs[0].dtype.itemsize
        self.kv = KVCacheManager(specs, budget // lp)
        self.scheduler = Scheduler(self.kv, max_num_seqs, max_num_batched_tokens)
        self._n = 0

    def add_request(self, ids: list[int], params: SamplingParams) -> str:
        seq = Sequence(f"sim-{self._n}", ids, params, self._n)
        self._n += 1
        self.scheduler.add(seq)
        return seq.request_id

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_work()

    def step(self) -> list:
        batch, failed = self.scheduler.schedule()
        done = list(failed)
        for seq in failed:
            seq.finish_reason = "error"
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed += n
        for seq in batch.seqs:
            if seq.num_computed == len(seq.token_ids):  # its last token is in: the engine samples one here
                seq.token_ids.append(3 + len(seq.token_ids) % 97)
                if seq.num_output_tokens >= seq.params.max_tokens:
                    seq.finish_reason = "length"
            self.scheduler.after_step(seq)
            if seq.finish_reason is not None:
                done.append(seq)
        for seq in done:
            self.scheduler.finish(seq)
        return done


def kv_sample(kv: KVCacheManager) -> dict:
    """Memory held by the pool vs bytes of small pages in use or cached, now."""
    lp = kv.large_page_elems * kv.specs[0].dtype.itemsize
    live_pages = {s.name: len(kv.allocators[s.name].ref) for s in kv.specs}  # in use or cached
    live = sum(live_pages[s.name] * s.page_bytes for s in kv.specs)
    return {"held": kv.pool.num_used * lp, "live": live, "pages": sum(live_pages.values())}


def run_workload(engine, requests: list[tuple[list[int], int]], label: str, max_steps: int = 1_000_000) -> dict:
    """Submit every request, step until all finish, sample running counts and KV use after each step."""
    for ids, max_tokens in requests:
        engine.add_request(ids, SamplingParams(max_tokens=max_tokens, ignore_eos=True))
    t0 = time.perf_counter()
    steps, peak_running, errors, finished = 0, 0, 0, 0
    samples = []
    while engine.has_unfinished_requests() and steps < max_steps:
        for out in engine.step():
            finished += 1
            errors += out.finish_reason == "error"
        steps += 1
        peak_running = max(peak_running, len(engine.scheduler.running))
        samples.append(kv_sample(engine.kv))
        if steps % 100 == 0:
            log(f"  {label}: step {steps}, running {len(engine.scheduler.running)}, finished {finished}")
    return {
        "requests": len(requests),
        "finished": finished,
        "errors": errors,
        "steps": steps,
        "peak_running": peak_running,
        "preemptions": engine.scheduler.num_preemptions,
        "peak_large_pages": engine.kv.peak_large_pages,
        "seconds": round(time.perf_counter() - t0, 2),
        "_samples": samples,
    }


def waste_stats(samples: list[dict], specs: list[KVSpec]) -> dict:
    """Jenga's waste (free slots inside held large pages) vs padding every page to the largest page size."""
    max_page = max(s.page_bytes for s in specs)
    rows = [s for s in samples if s["held"] > 0]
    if not rows:
        return {}
    peak = max(rows, key=lambda s: s["held"])

    def jenga(s):
        return (s["held"] - s["live"]) / s["held"]

    def naive(s):
        padded = s["pages"] * max_page
        return (padded - s["live"]) / padded if padded else 0.0

    return {
        "steps_sampled": len(rows),
        "jenga_waste_at_peak": round(jenga(peak), 4),
        "jenga_waste_mean": round(sum(map(jenga, rows)) / len(rows), 4),
        "jenga_waste_max": round(max(map(jenga, rows)), 4),
        "jenga_waste_bytes_weighted": round(sum(s["held"] - s["live"] for s in rows) / sum(s["held"] for s in rows), 4),
        "naive_padded_waste_at_peak": round(naive(peak), 4),
        "naive_padded_waste_mean": round(sum(map(naive, rows)) / len(rows), 4),
        "peak_held_bytes": peak["held"],
        "peak_live_bytes": peak["live"],
        "naive_padded_bytes_at_peak": peak["pages"] * max_page,
    }


def mixed_requests(n: int, vocab: int, seed: int, max_prompt: int, max_output: int) -> list[tuple[list[int], int]]:
    """Varied lengths (log-uniform prompts, uniform outputs); half share one of four 256-token prefixes."""
    rng = random.Random(seed)
    prefixes = [distinct_prompt(rng, 256, vocab, 10_000 + k) for k in range(4)]
    out = []
    for i in range(n):
        if rng.random() < 0.5:
            tail = int(math.exp(rng.uniform(math.log(8), math.log(max(9, max_prompt - 256)))))
            ids = prefixes[rng.randrange(4)] + distinct_prompt(rng, max(2, tail), vocab, i)
        else:
            ids = distinct_prompt(rng, int(math.exp(rng.uniform(math.log(16), math.log(max_prompt)))), vocab, i)
        out.append((ids, rng.randint(1, max_output)))
    return out


# ---- main -----------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run in a few seconds")
    ap.add_argument("--out", default=DEFAULT_OUT, help="folder for the JSON and PNG (default %(default)s)")
    ap.add_argument("--budget-mb", type=float, default=None,
                    help="KV budget for the capacity count (MiB; default 256, quick 64)")
    ap.add_argument("--request-tokens", type=int, default=2048)
    ap.add_argument("--chunk", type=int, default=512, help="prefill chunk (the engine's max_num_batched_tokens)")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--layers", type=int, default=12, help="Gemma 3 layers (every 6th is full attention)")
    ap.add_argument("--window", type=int, default=256, help="sliding_window")
    ap.add_argument("--e2e-budget-mb", type=float, default=None,
                    help="KV budget of the engine run (MiB; default 64, quick 8)")
    ap.add_argument("--e2e-max-tokens", type=int, default=None,
                    help="output tokens per engine request (default 256, quick 32)")
    ap.add_argument("--skip-e2e", action="store_true", help="skip the real-engine runs")
    ap.add_argument("--mix-requests", type=int, default=None,
                    help="requests in the heterogeneous mix (default 300, quick 60)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: the model is tiny, and extra threads only contend)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    quick = args.quick
    e2e_budget = int((args.e2e_budget_mb or (8 if quick else 64)) * MiB)
    e2e_out = args.e2e_max_tokens or (32 if quick else 256)
    mix_n = args.mix_requests or (60 if quick else 300)
    mix_engine_n = 8 if quick else 64
    budget = int((args.budget_mb or (64 if quick else 256)) * MiB)
    B, T, C = args.block_size, args.request_tokens, args.chunk
    seconds: dict[str, float] = {}
    result: dict = {"benchmark": NAME, "quick": quick,
                    "note": "random-weight model: outputs are nonsense; only the KV memory mechanics are measured. "
                            "Timings are incidental (shared CPU machine)."}

    with tempfile.TemporaryDirectory(prefix="jenga_bench_") as tmp:
        # ---- checkpoints --------------------------------------------------------------------------------------
        t0 = time.perf_counter()
        g3_dir = make_tiny_model(Path(tmp) / "gemma3", arch="gemma3_text", num_hidden_layers=args.layers,
                                 sliding_window=args.window, max_position_embeddings=max(4096, 2 * T))
        het_dir = make_tiny_model(Path(tmp) / "hetero", arch="llmsql_hetero", num_hidden_layers=8, hidden_size=128,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=32, sliding_head_dim=24,
                                  sliding_num_key_value_heads=1, sliding_window=128, max_position_embeddings=4096)
        seconds["make_checkpoints"] = round(time.perf_counter() - t0, 2)
        g3 = read_config(g3_dir)
        dtype = torch.float32  # the engine's dtype on CPU
        jenga = specs_for_model(g3, B, dtype)
        uniform = uniform_specs(g3, B, dtype)
        result["model"] = {
            "arch": "gemma3_text", "layers": g3.num_layers, "layer_types": list(g3.layer_types),
            "sliding_window": g3.sliding_window, "kv_heads": g3.full_num_kv_heads, "head_dim": g3.full_head_dim,
            "hidden_size": g3.hidden_size, "dtype": str(dtype), "block_size": B,
            "jenga_pages": page_geometry(jenga), "uniform_pages": page_geometry(uniform),
        }

        # ---- 1. capacity ----------------------------------------------------------------------------------------
        log(f"capacity: budget {mib(budget)} MiB, {T}-token requests, {C}-token chunks")
        t0 = time.perf_counter()
        cap_j = fill_to_capacity(jenga, budget, T, C, g3.vocab_size, args.seed)
        cap_u = fill_to_capacity(uniform, budget, T, C, g3.vocab_size, args.seed)
        seconds["capacity"] = round(time.perf_counter() - t0, 2)
        ratio = cap_j["requests_fit"] / max(1, cap_u["requests_fit"])
        result["capacity"] = {"budget_bytes": budget, "request_tokens": T, "chunk_tokens": C,
                              "jenga": cap_j, "uniform": cap_u, "ratio_jenga_over_uniform": round(ratio, 3),
                              "bytes_per_request_ratio_uniform_over_jenga":
                                  round(cap_u["kv_bytes_per_request"] / cap_j["kv_bytes_per_request"], 3)}
        log(f"  jenga {cap_j['requests_fit']} requests, uniform {cap_u['requests_fit']}: {ratio:.2f}x")

        # ---- 2. end to end --------------------------------------------------------------------------------------
        e2e_cap_j = fill_to_capacity(jenga, e2e_budget, T, C, g3.vocab_size, args.seed)["requests_fit"]
        e2e_cap_u = fill_to_capacity(uniform, e2e_budget, T, C, g3.vocab_size, args.seed)["requests_fit"]
        n_req = 2 * e2e_cap_j
        rng = random.Random(args.seed + 1)
        reqs = [(distinct_prompt(rng, T - e2e_out, g3.vocab_size, i), e2e_out) for i in range(n_req)]
        e2e = {"budget_bytes": e2e_budget, "prompt_tokens": T - e2e_out, "max_tokens": e2e_out,
               "max_num_batched_tokens": C, "requests": n_req,
               "capacity_jenga_at_this_budget": e2e_cap_j, "capacity_uniform_at_this_budget": e2e_cap_u}
        log(f"scheduler replay: {n_req} requests of {T - e2e_out}+{e2e_out} tokens, budget {mib(e2e_budget)} MiB")
        t0 = time.perf_counter()
        for label, specs in (("jenga", jenga), ("uniform", uniform)):
            r = run_workload(SchedulerReplay(specs, e2e_budget, 100_000, C), reqs, f"replay/{label}")
            r.pop("_samples")
            e2e[f"replay_{label}"] = r
        seconds["scheduler_replay"] = round(time.perf_counter() - t0, 2)
        if not args.skip_e2e:
            from engine_backend import LLMEngine

            log(f"engine: {n_req} requests (the model really runs; a few minutes at most on CPU)")
            t0 = time.perf_counter()
            eng = LLMEngine(model=str(g3_dir), kv_cache_memory=e2e_budget, max_num_seqs=100_000,
                            max_num_batched_tokens=C, block_size=B)
            r = run_workload(eng, reqs, "engine")
            r.pop("_samples")
            e2e["engine_jenga"] = r
            e2e["engine_matches_replay"] = (r["peak_running"] == e2e["replay_jenga"]["peak_running"]
                                            and r["preemptions"] == e2e["replay_jenga"]["preemptions"])
            seconds["engine"] = round(time.perf_counter() - t0, 2)
            del eng
        result["end_to_end"] = e2e

        # ---- 3. waste with heterogeneous page sizes ---------------------------------------------------------------
        het = read_config(het_dir)
        het_specs = specs_for_model(het, B, dtype)
        het_budget = 8 * MiB  # small on purpose: the pool fills, so eviction and preemption are exercised
        mix = mixed_requests(mix_n, het.vocab_size, args.seed + 2, max_prompt=1536, max_output=128)
        waste: dict = {"model": {"arch": "llmsql_hetero", "layer_types": list(het.layer_types),
                                 "sliding_window": het.sliding_window, **page_geometry(het_specs)},
                       "max_small_page_bytes": max(s.page_bytes for s in het_specs),
                       "budget_bytes": het_budget, "max_num_seqs": 64, "max_num_batched_tokens": C}
        log(f"page waste: {mix_n} mixed requests through the scheduler replay (hetero pages)")
        t0 = time.perf_counter()
        r = run_workload(SchedulerReplay(het_specs, het_budget, 64, C), mix, "replay/hetero")
        waste["replay"] = {**waste_stats(r.pop("_samples"), het_specs), **r}
        seconds["waste_replay"] = round(time.perf_counter() - t0, 2)
        if not args.skip_e2e:
            from engine_backend import LLMEngine

            log(f"page waste: {mix_engine_n} mixed requests through the engine")
            t0 = time.perf_counter()
            eng = LLMEngine(model=str(het_dir), kv_cache_memory=het_budget, max_num_seqs=64,
                            max_num_batched_tokens=C, block_size=B, max_model_len=2048)
            r = run_workload(eng, mix[:mix_engine_n], "engine/hetero")
            waste["engine"] = {**waste_stats(r.pop("_samples"), het_specs), **r}
            seconds["waste_engine"] = round(time.perf_counter() - t0, 2)
            del eng
        # the Gemma 3 capacity run, for reference: there the large page is the sliding page
        result["page_waste"] = waste
    result["seconds"] = seconds

    # ---- report ------------------------------------------------------------------------------------------------
    write_json(result, args.out, NAME)
    rows = [
        {"allocator": "jenga", "requests_fit": cap_j["requests_fit"],
         "KiB/request": round(cap_j["kv_bytes_per_request"] / 1024, 1),
         **{f"KiB/req {k}": round(v["kv_bytes_per_request"] / 1024, 1) for k, v in cap_j["per_type"].items()}},
        {"allocator": "uniform", "requests_fit": cap_u["requests_fit"],
         "KiB/request": round(cap_u["kv_bytes_per_request"] / 1024, 1),
         **{f"KiB/req {k}": round(v["kv_bytes_per_request"] / 1024, 1) for k, v in cap_u["per_type"].items()}},
    ]
    headers = list(dict.fromkeys(k for r in rows for k in r))
    print_table(headers, rows, title=f"Capacity at {mib(budget)} MiB, {T}-token requests "
                                     f"(ratio {ratio:.2f}x)")
    e2e_rows = [{"run": k, "peak_running": v["peak_running"], "preemptions": v["preemptions"], "steps": v["steps"],
                 "errors": v["errors"], "seconds": v["seconds"]}
                for k, v in e2e.items() if isinstance(v, dict)]
    print_table(list(e2e_rows[0]), e2e_rows, title=f"End to end at {mib(e2e_budget)} MiB, {n_req} requests "
                                f"(capacity jenga {e2e_cap_j}, uniform {e2e_cap_u})")
    w_rows = [{"run": k, **{m: waste[k][m] for m in ("jenga_waste_at_peak", "jenga_waste_mean",
                                                       "naive_padded_waste_at_peak", "naive_padded_waste_mean",
                                                       "peak_running", "preemptions")}}
              for k in ("replay", "engine") if k in waste]
    print_table(list(w_rows[0]), w_rows, title=f"Page waste, hetero pages {[s.page_bytes for s in het_specs]} B, "
                              f"large page {waste['model']['large_page_bytes']} B")

    plt = pyplot()
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(13, 4))
    bars = a1.bar(["uniform", "jenga"], [cap_u["requests_fit"], cap_j["requests_fit"]], color=["#999999", "#2b7bba"])
    a1.bar_label(bars)
    a1.set_title(f"{T}-token requests that fit\nin {mib(budget):g} MiB of KV ({ratio:.2f}x)")
    a1.set_ylabel("requests")
    labels = ["uniform\n(replay)", "jenga\n(replay)"]
    vals = [e2e["replay_uniform"]["peak_running"], e2e["replay_jenga"]["peak_running"]]
    colors = ["#999999", "#2b7bba"]
    if "engine_jenga" in e2e:
        labels.append("jenga\n(engine)")
        vals.append(e2e["engine_jenga"]["peak_running"])
        colors.append("#1a4f7a")
    bars = a2.bar(labels, vals, color=colors)
    a2.bar_label(bars)
    a2.set_title(f"peak running requests, scheduler\n{mib(e2e_budget):g} MiB, {n_req} requests")
    kinds = [k for k in ("replay", "engine") if k in waste]
    x = range(len(kinds))
    a3.bar([i - 0.2 for i in x], [100 * waste[k]["jenga_waste_mean"] for k in kinds], 0.4, label="jenga (mean)")
    a3.bar([i + 0.2 for i in x], [100 * waste[k]["naive_padded_waste_mean"] for k in kinds], 0.4,
           label="pad to largest page (mean)", color="#999999")
    a3.set_xticks(list(x), kinds)
    a3.set_ylabel("% of held KV bytes wasted")
    a3.set_title("page waste, heterogeneous page sizes")
    a3.legend()
    png = save_png(fig, NAME, args.out)
    log(f"wrote {Path(args.out) / (NAME + '.json')} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

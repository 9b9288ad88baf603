"""Time to first token with ``stream=true`` under many concurrent clients, against the same clients waiting for
whole answers, same server, same run.

``llm-sql serve`` runs in its own process on the 24M-parameter Llama with a real vocabulary (Qwen2's); N clients
(the official ``openai`` client, asyncio) each send one chat request at once, with distinct prompts, greedy and
``max_tokens`` generated tokens (``ignore_eos``). A client that does not stream sees its first token when the whole
answer arrives; a streaming one, when the first content chunk does. Rounds alternate plain and streamed so
machine noise falls on both; the table gives medians over rounds of the per-round p50 / p95.

    python bench/server_streaming.py                 # 32 clients, 64 tokens each
    python bench/server_streaming.py --quick         # a small model, 4 clients: a smoke run
"""
from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import (LLAMA_24M, checkpoint_dir, log, print_table, save_bar_chart, start_serve,  # noqa: E402
                     stop_serve, write_json)

from engine_backend.testing import make_tiny_model  # noqa: E402

TOPICS = ["hops", "malt", "foam", "colour", "aroma", "bitterness", "body", "finish"]


async def one_client(client, model: str, i: int, max_tokens: int, stream: bool) -> dict:
    messages = [{"role": "user", "content": f"Review {i}: describe the {TOPICS[i % len(TOPICS)]} of beer "
                                            f"number {i} in a few sentences."}]
    extra = {"ignore_eos": True}
    start = time.perf_counter()
    if not stream:
        resp = await client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                    extra_body=extra)
        done = time.perf_counter() - start
        return {"ttft": done, "total": done, "tokens": resp.usage.completion_tokens}
    first = None
    tokens = 0
    chunks = await client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                  stream=True, stream_options={"include_usage": True},
                                                  extra_body=extra)
    async for chunk in chunks:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    total = time.perf_counter() - start
    return {"ttft": first if first is not None else total, "total": total, "tokens": tokens}


async def one_round(url: str, key: str, model: str, clients: int, max_tokens: int, stream: bool) -> dict:
    import openai

    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=600,
                                  http_client=None) as client:
        start = time.perf_counter()
        runs = await asyncio.gather(*(one_client(client, model, i, max_tokens, stream) for i in range(clients)))
        wall = time.perf_counter() - start
    ttft = sorted(r["ttft"] for r in runs)
    return {"ttft_p50": statistics.median(ttft), "ttft_p95": ttft[min(len(ttft) - 1, int(0.95 * len(ttft)))],
            "total_p50": statistics.median(r["total"] for r in runs), "wall": wall,
            "tokens_per_s": sum(r["tokens"] for r in runs) / wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a small model, 4 clients, 1 round (smoke test)")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()

    dims, name = dict(LLAMA_24M, tie_word_embeddings=True), "constrained-24m-qwen2"  # shared with constrained_decoding
    if args.quick:
        args.clients, args.max_tokens, args.rounds = 4, 8, 1
        dims = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, tie_word_embeddings=True)
        name = "constrained-quick-qwen2"
    model_dir = checkpoint_dir(name)
    if not (model_dir / "config.json").exists():
        log(f"writing the checkpoint {model_dir}")
        make_tiny_model(model_dir, arch="llama", tokenizer="qwen2", **dims)
    key = secrets.token_urlsafe(16)
    log("starting llm-sql serve")
    proc, url = start_serve(model_dir, key)
    try:
        model = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["data"][0]["id"]
        asyncio.run(one_round(url, key, model, min(4, args.clients), 4, True))  # warm-up: first-call costs
        rounds: dict[str, list[dict]] = {"plain": [], "stream": []}
        for r in range(args.rounds):
            for mode in ("plain", "stream"):
                res = asyncio.run(one_round(url, key, model, args.clients, args.max_tokens, mode == "stream"))
                rounds[mode].append(res)
                log(f"round {r + 1} {mode}: ttft p50 {res['ttft_p50']:.3f}s p95 {res['ttft_p95']:.3f}s, "
                    f"{res['tokens_per_s']:.0f} tok/s")
    finally:
        stop_serve(proc)

    summary = {mode: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for mode, runs in rounds.items()}
    ratio_ttft = summary["stream"]["ttft_p50"] / summary["plain"]["ttft_p50"]
    ratio_tps = summary["stream"]["tokens_per_s"] / summary["plain"]["tokens_per_s"]
    rows = [[mode, f"{s['ttft_p50']:.3f}", f"{s['ttft_p95']:.3f}", f"{s['total_p50']:.3f}", f"{s['tokens_per_s']:.0f}"]
            for mode, s in summary.items()]
    print_table(["client", "first token p50 s", "first token p95 s", "whole answer p50 s", "tokens/s"], rows,
                title=f"{args.clients} concurrent chat clients, {args.max_tokens} tokens each ({model_dir.name})")
    print(f"streamed / plain: time to first token {ratio_ttft:.3f}x, throughput {ratio_tps:.3f}x")
    write_json({"clients": args.clients, "max_tokens": args.max_tokens, "rounds": rounds, "summary": summary,
                "ttft_ratio_stream_over_plain": ratio_ttft, "throughput_ratio_stream_over_plain": ratio_tps,
                "cpu_count": os.cpu_count()}, args.out, "server_streaming")
    save_bar_chart({m: {"first token p50": s["ttft_p50"], "first token p95": s["ttft_p95"]}
                    for m, s in summary.items()}, "seconds", "Time to first token", args.out, "server_streaming")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Engine throughput on an LLM-SQL-shaped workload and on a plain one, against transformers.

Workloads (same prompt lengths, short outputs, every request generates exactly ``--max-tokens``):
- shared: a long instruction shared by every prompt, then one table row (what the optimiser sends);
- plain:  prompts with no shared prefix.
Baseline, measured in the same run on the same checkpoint: transformers' batched greedy
``generate`` (left padding, ``--hf-batch`` prompts per call). Ours: one ordered ``LLMEngine.generate``.

The checkpoint carries a real vocabulary (``--tokenizer qwen2``, the default; ``gpt2``; ``trained``: the old
512-token BPE), and each prompt is what a deployment sends: the checkpoint's chat template with the
instruction as the system message and the row as the user message (``--no-chat``: the bare text).

    python bench/engine_throughput.py [--quick] [--prompts 300] [--tokenizer qwen2|gpt2|trained] [--block-size 16]
                                      [--out bench/results]
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import LLAMA_24M, checkpoint_dir, print_table, save_bar_chart, timed_generate, write_json  # noqa: E402

from engine_backend import LLMEngine, SamplingParams  # noqa: E402
from engine_backend.loader import load_model  # noqa: E402
from engine_backend.testing import make_tiny_model  # noqa: E402

WORDS = ("malt hops caramel bitter sweet crisp flat sour amber golden dark roasty citrus pine smooth thin "
         "creamy dry hazy toffee biscuit grassy floral metallic watery lively").split()
# A system prompt, the instruction and two worked examples: what every prompt of one LLM-SQL stage shares.
INSTRUCTION = (
    "You are a careful beer analyst working inside a SQL query. Decide whether the review below is positive or "
    "negative. Weigh aroma, taste, palate and appearance; ignore the reviewer's name and the date; answer with "
    "exactly one word, positive or negative, and nothing else.\n"
    "Example review: golden crisp citrus pine smooth lively floral dry biscuit grassy sweet malt hops\n"
    "Answer: positive\n"
    "Example review: flat watery metallic thin sour dark roasty bitter hazy toffee creamy caramel amber\n"
    "Answer: negative\n"
    "Example review: smooth creamy caramel toffee biscuit golden malt sweet dry crisp lively citrus\n"
    "Answer: positive\n")


def make_prompts(n: int, shared: bool, seed: int = 0, tokenizer=None) -> list[str]:
    """``tokenizer`` given: each prompt in its chat template (instruction as the system message)."""
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        row = " ".join(rng.choice(WORDS) for _ in range(12))
        head = INSTRUCTION if shared else " ".join(rng.choice(WORDS) for _ in range(len(INSTRUCTION.split())))
        if tokenizer is None:
            prompts.append(f"{head}\nReview {i}: {row}\nAnswer:")
        else:
            prompts.append(tokenizer.apply_chat_template([{"role": "system", "content": head},
                                                          {"role": "user", "content": f"Review {i}: {row}"}]))
    return prompts


def run_ours(model_dir: str, prompts: list[str], max_tokens: int, prefix_caching: bool = True,
             block_size: int = 16) -> dict:
    engine = LLMEngine(model=model_dir, kv_cache_memory="1GB", enable_prefix_caching=prefix_caching,
                       max_num_batched_tokens=2048, max_num_seqs=256, block_size=block_size)
    outs, seconds, before, s = timed_generate(engine, prompts, SamplingParams(max_tokens=max_tokens, ignore_eos=True))
    prompt_tokens = s["prompt_tokens"] - before["prompt_tokens"]
    cached = s["cached_prompt_tokens"] - before["cached_prompt_tokens"]
    gen = sum(len(o.token_ids) for o in outs)
    return {"seconds": seconds, "prompt_tokens": prompt_tokens, "generated_tokens": gen,
            "prefix_hit_rate": cached / prompt_tokens, "requests_per_s": len(prompts) / seconds,
            "tokens_per_s": (prompt_tokens + gen) / seconds}


def run_transformers(model_dir: str, prompts: list[str], max_tokens: int, batch: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # always generate max_tokens, like ignore_eos
    def gen(chunk):
        enc = tok(chunk, return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        return enc, out
    gen(prompts[:2])  # warm-up
    t0 = time.perf_counter()
    prompt_tokens = generated = 0
    for i in range(0, len(prompts), batch):
        enc, out = gen(prompts[i:i + batch])
        prompt_tokens += int(enc["attention_mask"].sum())
        generated += (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "prompt_tokens": prompt_tokens, "generated_tokens": generated,
            "requests_per_s": len(prompts) / seconds, "tokens_per_s": (prompt_tokens + generated) / seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=300)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--hf-batch", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="a tiny model and few prompts (smoke test)")
    ap.add_argument("--tokenizer", choices=("qwen2", "gpt2", "trained"), default="qwen2",
                    help="the checkpoint's vocabulary (default qwen2; trained: the old 512-token BPE)")
    ap.add_argument("--no-chat", action="store_true", help="bare prompts, without the chat template")
    ap.add_argument("--block-size", type=int, default=16, help="tokens per KV page of our engine")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()

    if args.quick:
        args.prompts = min(args.prompts, 24)
        dims = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128)
    else:
        dims = LLAMA_24M
    name = "throughput-quick" if args.quick else "throughput-24m"
    if args.tokenizer != "trained":  # a real vocabulary: the LM head tied to the (vocabulary x hidden) embedding
        name, dims = f"{name}-{args.tokenizer}", dict(dims, tie_word_embeddings=True)
    model_dir = checkpoint_dir(name)
    if not (model_dir / "config.json").exists():
        make_tiny_model(model_dir, arch="llama", tokenizer=args.tokenizer, **dims)
    n_params = sum(p.numel() for p in load_model(str(model_dir)).parameters())
    print(f"checkpoint: {n_params / 1e6:.1f}M parameters, {args.prompts} prompts, {args.max_tokens} new tokens",
          file=sys.stderr)
    from engine_backend.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dir(model_dir)

    results = {"parameters": n_params, "tokenizer": args.tokenizer, "vocab_size": tokenizer.vocab_size,
               "chat_template": not args.no_chat, "block_size": args.block_size, "prompts": args.prompts,
               "max_tokens": args.max_tokens, "hf_batch": args.hf_batch, "torch_threads": torch.get_num_threads(),
               "workloads": {}}
    for name, shared in (("shared_prefix", True), ("plain", False)):
        prompts = make_prompts(args.prompts, shared, tokenizer=None if args.no_chat else tokenizer)
        print(f"[{name}] llm-sql engine ...", file=sys.stderr)
        ours = run_ours(str(model_dir), prompts, args.max_tokens, block_size=args.block_size)
        print(f"[{name}] transformers generate ...", file=sys.stderr)
        hf = run_transformers(str(model_dir), prompts, args.max_tokens, args.hf_batch)
        results["workloads"][name] = {"engine": ours, "transformers": hf,
                                      "speedup": hf["seconds"] / ours["seconds"]}

    rows = [[name, f"{w['engine']['prompt_tokens'] / args.prompts:.1f}", f"{w['transformers']['seconds']:.2f}",
             f"{w['engine']['seconds']:.2f}", f"{w['speedup']:.2f}x",
             f"{w['engine']['prefix_hit_rate']:.1%}", f"{w['engine']['tokens_per_s']:.0f}",
             f"{w['transformers']['tokens_per_s']:.0f}"]
            for name, w in results["workloads"].items()]
    print_table(["workload", "tokens/prompt", "transformers s", "engine s", "speedup", "hit rate", "engine tok/s",
                 "hf tok/s"], rows, title=f"{n_params / 1e6:.1f}M parameters, {args.tokenizer} vocabulary, "
                                          f"block {args.block_size}")
    write_json(results, args.out, "engine_throughput")
    save_bar_chart({name: {"transformers": w["transformers"]["seconds"], "llm-sql engine": w["engine"]["seconds"]}
                    for name, w in results["workloads"].items()},
                   "seconds (lower is better)", "Engine vs transformers.generate", args.out, "engine_throughput")
    return 0


if __name__ == "__main__":
    sys.exit(main())

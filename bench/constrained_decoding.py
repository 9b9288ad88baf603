"""Per-token cost of grammar-constrained decoding against free decoding, same engine, same run.

The 24M-parameter Llama with a real vocabulary (Qwen2's, 151k tokens: the mask covers a real vocabulary),
greedy, distinct prompts, at batch 1 and batch 64. Free decoding runs ``max_tokens`` with ``ignore_eos``; the
constrained run decodes under a JSON schema whose one string field is long enough that no request finishes
early, so both generate the same number of tokens and the ratio of seconds per generated token is the
overhead. A third pair compares the two ways of decoding a label: the choice trie and the same choices as a
regex grammar.

    python bench/constrained_decoding.py            # aim: overhead under 10% at batch 1 and 64
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import LLAMA_24M, checkpoint_dir, log, print_table, save_bar_chart, write_json  # noqa: E402

from engine_backend import LLMEngine, SamplingParams  # noqa: E402
from engine_backend.testing import make_tiny_model  # noqa: E402

LONG_TEXT = {"type": "object", "properties": {"notes": {"type": "string"}},  # unbounded: a small automaton
             "required": ["notes"]}
LABELS = ["positive", "negative", "neutral"]


def timed(engine: LLMEngine, prompts: list[str], params: SamplingParams) -> dict:
    engine.reset_prefix_cache()
    start = time.perf_counter()
    outs = engine.generate(prompts, params)
    seconds = time.perf_counter() - start
    tokens = sum(len(o.token_ids) for o in outs)
    return {"seconds": seconds, "generated_tokens": tokens, "ms_per_token": 1e3 * seconds / max(1, tokens),
            "finished_early": sum(o.finish_reason == "stop" for o in outs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,64", help="batch sizes, comma-separated")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--tokenizer", choices=("qwen2", "gpt2", "trained"), default="qwen2")
    ap.add_argument("--quick", action="store_true", help="a tiny model, small batches (smoke test)")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()

    batches = [int(b) for b in args.batches.split(",")]
    dims = dict(LLAMA_24M, tie_word_embeddings=True)
    name = f"constrained-24m-{args.tokenizer}"
    if args.quick:
        batches, args.max_tokens = [1, 4], 6
        dims = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, tie_word_embeddings=True)
        name = f"constrained-quick-{args.tokenizer}"
    model_dir = checkpoint_dir(name)
    if not (model_dir / "config.json").exists():
        make_tiny_model(model_dir, arch="llama", tokenizer=args.tokenizer, **dims)
    engine = LLMEngine(model=str(model_dir))
    vocab = engine.tokenizer.vocab_size
    log(f"{name}: vocabulary {vocab}, batches {batches}, {args.max_tokens} tokens")
    engine.generate(["warm up"], SamplingParams(max_tokens=2, json_schema=LONG_TEXT))  # compile the index once

    results = {"tokenizer": args.tokenizer, "vocab_size": vocab, "max_tokens": args.max_tokens, "runs": {}}
    rows, chart = [], {}
    for batch in batches:
        prompts = [f"Review {i}: a hoppy pale ale from brewery number {i * 7}. Notes:" for i in range(batch)]
        free = timed(engine, prompts, SamplingParams(max_tokens=args.max_tokens, ignore_eos=True))
        schema = timed(engine, prompts, SamplingParams(max_tokens=args.max_tokens, json_schema=LONG_TEXT))
        trie = timed(engine, prompts, SamplingParams(choices=[" " + x for x in LABELS]))
        regex = timed(engine, prompts, SamplingParams(max_tokens=8, regex="( positive| negative| neutral)"))
        overhead = schema["ms_per_token"] / free["ms_per_token"] - 1
        results["runs"][str(batch)] = {"free": free, "json_schema": schema, "choices_trie": trie,
                                       "choices_regex": regex, "json_overhead": overhead,
                                       "regex_vs_trie": regex["seconds"] / trie["seconds"]}
        rows.append([batch, f"{free['ms_per_token']:.2f}", f"{schema['ms_per_token']:.2f}", f"{overhead:+.1%}",
                     schema["finished_early"], f"{trie['seconds']:.3f}", f"{regex['seconds']:.3f}"])
        chart[f"batch {batch}"] = {"free": free["ms_per_token"], "json_schema": schema["ms_per_token"]}
    print_table(["batch", "free ms/tok", "json ms/tok", "overhead", "json stopped early", "trie s", "regex s"],
                rows, title=f"constrained decoding, {vocab}-token vocabulary")
    write_json(results, args.out, "constrained_decoding")
    save_bar_chart(chart, "ms per generated token", "Free vs JSON-schema decoding", args.out, "constrained_decoding")
    return 0


if __name__ == "__main__":
    sys.exit(main())

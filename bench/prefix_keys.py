"""What the sha256 prefix-cache keys cost on the shared-prefix throughput workload, against the old keys.

The engine's block keys are a sha256 chain (``Sequence.block_keys``), because one server serves every client
with the token and Python's unseeded hash of int tuples can be made to collide. The baseline here is the
old key (parent's ``hash()`` plus the block's token tuple), patched in for the baseline runs only. Both run
the same prompts as ``engine_throughput.py``'s shared-prefix workload, interleaved, each configuration's
fastest of ``--repeat`` runs kept (the machine may be shared).

    python bench/prefix_keys.py            # aim: sha256 within 2% of the old keys
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import LLAMA_24M, checkpoint_dir, log, print_table, save_bar_chart, write_json  # noqa: E402
from engine_throughput import make_prompts, run_ours  # noqa: E402

from engine_backend.sequence import Sequence  # noqa: E402
from engine_backend.testing import make_tiny_model  # noqa: E402
from engine_backend.tokenizer import Tokenizer  # noqa: E402


def legacy_block_keys(self, block_size: int, num_blocks: int) -> list:
    """The keys before sha256: the parent key's hash() and the block's token tuple (the baseline only)."""
    keys = self._block_keys
    for b in range(len(keys), num_blocks):
        parent = hash(keys[b - 1]) if b else None
        keys.append((parent, tuple(self.token_ids[b * block_size:(b + 1) * block_size])))
    return keys[:num_blocks] if num_blocks < len(keys) else keys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=300)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tokenizer", choices=("qwen2", "gpt2", "trained"), default="qwen2")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()

    name = f"throughput-24m-{args.tokenizer}"
    model_dir = checkpoint_dir(name)
    if not (model_dir / "config.json").exists():
        make_tiny_model(model_dir, arch="llama", tokenizer=args.tokenizer, **dict(LLAMA_24M, tie_word_embeddings=True))
    prompts = make_prompts(args.prompts, True, tokenizer=Tokenizer.from_dir(model_dir))
    sha256_keys = Sequence.block_keys
    runs: dict[str, list[dict]] = {"old keys": [], "sha256 keys": []}
    for r in range(args.repeat):
        for label, keys in (("old keys", legacy_block_keys), ("sha256 keys", sha256_keys)):
            Sequence.block_keys = keys
            try:
                runs[label].append(run_ours(str(model_dir), prompts, args.max_tokens))
            finally:
                Sequence.block_keys = sha256_keys
            log(f"repeat {r + 1}: {label} {runs[label][-1]['seconds']:.2f} s")
    best = {label: min(rs, key=lambda x: x["seconds"]) for label, rs in runs.items()}
    ratio = best["sha256 keys"]["seconds"] / best["old keys"]["seconds"]
    results = {"prompts": args.prompts, "max_tokens": args.max_tokens, "repeat": args.repeat, "runs": runs,
               "best": best, "sha256_over_old": ratio}
    print_table(["keys", "best s", "hit rate", "all runs s"],
                [[label, f"{b['seconds']:.2f}", f"{b['prefix_hit_rate']:.1%}",
                  ", ".join(f"{x['seconds']:.2f}" for x in runs[label])] for label, b in best.items()],
                title=f"shared-prefix workload, {args.prompts} prompts: sha256 / old = {ratio:.3f}")
    write_json(results, args.out, "prefix_keys")
    save_bar_chart({"shared prefix": {k: b["seconds"] for k, b in best.items()}}, "seconds (lower is better)",
                   "Prefix-cache keys: sha256 vs hash()", args.out, "prefix_keys")
    return 0


if __name__ == "__main__":
    sys.exit(main())

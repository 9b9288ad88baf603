"""How well the trained tiny checkpoints answer, and how long they take to train.

``make_tiny_model(..., train="copy")`` trains a tiny checkpoint on CPU to answer three instructions over a beer
row (``engine_backend.tiny_training``): ``extract`` (copy the name), ``classify`` (good/bad from the taste) and
``describe`` (a sentence, part template and part copy). This script trains the speculative-decoding benchmark's
target and draft sizes and reports, per size: training seconds (from the training run itself; a cached
checkpoint reports the seconds it took when it was trained), the final loss, and exact-match accuracy of greedy
answers (answer then EOS) on rows held out of training: rows whose beer name training never saw, of the shared
beer table and of the synthetic generator, distinct names only.

Greedy decoding here is ``tiny_training.greedy_answer`` (the engine's model, dense attention, no cache), so the
figures do not depend on the serving engine.

    python bench/tiny_training.py                 # target and draft: ~2.5 min training (cached after), ~3 min answering
    python bench/tiny_training.py --quick         # 60 steps each: a smoke run (accuracy near zero)
    python bench/tiny_training.py --arch qwen3 --sizes target --steps 1000 --rows 40
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import REPO, checkpoint_dir, log, print_table, write_json  # noqa: E402

from engine_backend.loader import load_model  # noqa: E402
from engine_backend.testing import make_tiny_model  # noqa: E402
from engine_backend.tiny_training import TASKS, accuracy, rows_for, train_summary  # noqa: E402
from engine_backend.tokenizer import Tokenizer  # noqa: E402

NAME = "tiny_training"
TABLE = REPO.parent / "shared" / "data" / "llmsql" / "beer.csv"
# The sizes bench/smartspec.py uses for its target and draft.
SIZES = {
    "target": dict(hidden_size=128, num_hidden_layers=4, intermediate_size=256, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=32),
    "draft": dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16),
}
SEEDS = {"target": 0, "draft": 1}


def held_out(table, n: int) -> list[dict]:
    """``n`` held-out rows with distinct beer names (the table repeats names many times)."""
    seen: dict[str, dict] = {}
    for row in rows_for(table, 50 * n, seed=12345, split="test"):
        seen.setdefault(row["beer/name"], row)
        if len(seen) == n:
            break
    return list(seen.values())


def measure(path: Path, evals: dict[str, list[dict]]) -> dict:
    model, tok = load_model(path), Tokenizer.from_dir(path)
    out = {}
    for source, rows in evals.items():
        for task in TASKS:
            acc, misses = accuracy(model, tok, rows, task)
            out[f"{source}/{task}"] = round(acc, 3)
            if misses:
                log(f"  {source}/{task} {acc:.0%}; e.g. got {misses[0][0]!r}, expected {misses[0][1]!r}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="60 training steps per size, 10 rows: a smoke run")
    ap.add_argument("--arch", default="llama")
    ap.add_argument("--sizes", default="target,draft")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the module's default)")
    ap.add_argument("--rows", type=int, default=None, help="held-out rows per source (default 60, quick 10)")
    ap.add_argument("--synthetic", action="store_true", help="train on synthetic rows even if the table exists")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    table = None if args.synthetic or not TABLE.exists() else TABLE
    steps = 60 if args.quick and args.steps is None else args.steps
    n = args.rows or (10 if args.quick else 60)
    evals = {"synthetic": held_out(None, n)}
    if TABLE.exists():
        evals["beer"] = held_out(TABLE, n)
    report = {"arch": args.arch, "table": str(table) if table else "synthetic", "rows": n, "sizes": {}}
    for size in args.sizes.split(","):
        tag = f"{args.arch}-{size}-{steps or 'default'}{'-synthetic' if table is None else ''}"
        path = checkpoint_dir(f"tiny-trained-{tag}")
        t0 = time.perf_counter()
        make_tiny_model(path, args.arch, seed=SEEDS[size], train="copy", train_table=table, train_steps=steps,
                        **SIZES[size])
        wall = time.perf_counter() - t0
        summary = train_summary(path, train_table=table, train_steps=steps, seed=SEEDS[size]) or {}
        log(f"{size}: {summary}, make_tiny_model {wall:.1f}s")
        report["sizes"][size] = {"config": SIZES[size], "train": summary, "make_seconds": round(wall, 1),
                                 "accuracy": measure(path, evals)}
    rows = [{"size": s, "steps": r["train"].get("steps"), "train s": r["train"].get("seconds"),
             "final loss": round(r["train"].get("final_loss", float("nan")), 3), **r["accuracy"]}
            for s, r in report["sizes"].items()]
    print_table(list(rows[0]), rows, title="exact-match accuracy on held-out rows")
    write_json(report, args.out, NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())

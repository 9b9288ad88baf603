"""SmartSpec on the embedded engine: no speculation, fixed k = 2, 4, 8, and SmartSpec's per-request k, same run.

Random weights propose nothing predictable, so the target and its draft are tiny checkpoints trained here on
CPU (``make_tiny_model(..., train="copy")``, cached after the first run) on beer rows
(``../shared/data/llmsql/beer.csv``; a synthetic beer-like table when it is missing) to answer three
instructions: ``extract`` (copies the beer's name out of the prompt), ``classify`` (good / bad: few distinct
answers) and ``describe`` (a sentence, part template and part copy). Prompts are the trained format
(``engine_backend.tiny_training.task_prompt``), on rows held out of training.

1. **Workloads.** Each instruction at batch sizes 1, 8, 64 and 256 (B requests submitted together; such
   batches run 16, 4, 2 and 1 times one after another, so that each measurement lasts long enough to time).
   Proposers: prompt lookup and batch lookup (``["ngram", "batch"]``),
   each request taking its better one. Tokens/s and mean request latency per setting; the draft model at
   k = 4 and under SmartSpec is measured beside them.
2. **Acceptance sweep.** An oracle proposer (it knows the greedy answer and corrupts each token with
   probability 1 - p) on ``describe`` at p = 0.2 ... 0.9, every batch size: SmartSpec against each fixed k.

Every engine is warmed on rows outside the measured ones (not timed) and its prefix cache emptied before each
measured run; outputs are checked equal to no speculation (greedy). Aims: SmartSpec within 5% of the best
fixed k everywhere; >= 2x over no speculation on extraction at batch 1-8; never > 3% slower than no
speculation at batch 256.

    python bench/smartspec.py                # about 15 minutes on 2 cores (the first run also trains, ~3 min)
    python bench/smartspec.py --quick        # a small smoke run
    python bench/smartspec.py --device cuda  # the same on a GPU
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import REPO, checkpoint_dir, log, print_table, save_bar_chart, write_json  # noqa: E402

import torch  # noqa: E402

from engine_backend import LLMEngine, SamplingParams  # noqa: E402
from engine_backend.spec.oracle import OracleProposer  # noqa: E402
from engine_backend.testing import make_tiny_model  # noqa: E402
from engine_backend.tiny_training import TASKS, rows_for, task_prompt  # noqa: E402

TABLE = REPO.parent / "shared" / "data" / "llmsql" / "beer.csv"
TARGET = dict(hidden_size=128, num_hidden_layers=4, intermediate_size=256, num_attention_heads=4,
              num_key_value_heads=2, head_dim=32)
DRAFT = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16)
FREE = ["ngram", "batch"]
FIXED_KS = (2, 4, 8)
MAX_TOKENS = 48
ROUNDS = {1: 16, 8: 4, 64: 2, 256: 1}  # batches run one after another per measurement: long enough to time


def settings(method, ks=FIXED_KS) -> dict:
    """Setting name -> the engine's ``speculative`` option (None: off)."""
    out = {"none": None}
    out.update({f"k={k}": {"method": method(), "num_speculative_tokens": k} for k in ks})
    out["smartspec"] = {"method": method(), "num_speculative_tokens": "auto"}
    return out


def measure(engine, prompts: list[str], batch: int, params) -> dict:
    """Run ``prompts`` ``batch`` at a time (all together when batch >= len); tokens/s and mean latency."""
    engine.reset_prefix_cache()
    latencies, outs, tokens = [], {}, 0
    t0 = time.perf_counter()
    groups = [prompts[i:i + batch] for i in range(0, len(prompts), batch)]
    for group in groups:
        start = time.perf_counter()
        ids = {engine.add_request(p, params): i for i, p in enumerate(group)}
        while engine.has_unfinished_requests():
            for o in engine.step():
                latencies.append(time.perf_counter() - start)
                outs[o.request_id] = o
                tokens += len(o.token_ids)
        del ids
    seconds = time.perf_counter() - t0
    texts = [outs[k].token_ids for k in sorted(outs, key=lambda r: int(r.split("-")[1]))]
    return {"tokens_per_s": tokens / seconds, "mean_latency_s": statistics.mean(latencies), "seconds": seconds,
            "tokens": tokens, "outputs": texts}


def run_setting(target, spec, prompts, warm, batches, params, device, repeats, rounds) -> dict:
    """One engine per setting, warmed on other rows, measured at each batch size (best of ``repeats``)."""
    engine = LLMEngine(str(target), device=device, max_num_seqs=max(batches), speculative=spec)
    engine.generate(warm, params)
    out = {}
    for b in batches:
        n = b * rounds.get(b, 1)
        runs = [measure(engine, prompts[:n], b, params) for _ in range(repeats)]
        best = max(runs, key=lambda r: r["tokens_per_s"])
        stats = engine.stats()
        best.update(spec_mean_k=stats["spec_mean_k"], spec_acceptance_rate=stats["spec_acceptance_rate"])
        out[b] = best
    return out


def strip(results: dict) -> dict:
    """The runs without their outputs (compared already), for the JSON."""
    return {name: {b: {k: v for k, v in r.items() if k != "outputs"} for b, r in per.items()}
            for name, per in results.items()}


def compare(results: dict, batches) -> list[dict]:
    """Per batch size: tokens/s per setting, SmartSpec over the best fixed k and over no speculation."""
    rows = []
    for b in batches:
        row = {"batch": b}
        for name, r in results.items():
            row[name] = round(r[b]["tokens_per_s"], 1)
        fixed = [results[f"k={k}"][b]["tokens_per_s"] for k in FIXED_KS if f"k={k}" in results]
        row["smartspec/best_fixed"] = round(results["smartspec"][b]["tokens_per_s"] / max(fixed), 3)
        row["smartspec/none"] = round(results["smartspec"][b]["tokens_per_s"] / results["none"][b]["tokens_per_s"], 3)
        row["smartspec_mean_k"] = round(results["smartspec"][b]["spec_mean_k"], 2)
        rows.append(row)
    return rows


def checkpoints(quick: bool, table) -> tuple[Path, Path]:
    steps = 30 if quick else None
    tag = "quick" if quick else "full"
    target = make_tiny_model(checkpoint_dir(f"smartspec-target-{tag}"), "llama", train="copy", train_table=table,
                             train_steps=steps, **TARGET)
    draft = make_tiny_model(checkpoint_dir(f"smartspec-draft-{tag}"), "llama", seed=1, train="copy",
                            train_table=table, train_steps=steps, **DRAFT)
    return target, draft


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, few training steps: a smoke run")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--repeats", type=int, default=None, help="measured runs per point, best kept (default 2, quick 1)")
    args = ap.parse_args()
    torch.manual_seed(0)
    quick = args.quick
    repeats = args.repeats or (1 if quick else 2)
    batches = [1, 8] if quick else [1, 8, 64, 256]
    rates = [0.3, 0.8] if quick else [0.2, 0.4, 0.6, 0.8, 0.9]
    table = TABLE if TABLE.exists() else None
    if table is None:
        log(f"{TABLE} is missing: using the synthetic beer-like table")
    target, draft = checkpoints(quick, table)
    rounds = {1: 4, 8: 1} if quick else ROUNDS
    n = max(b * rounds.get(b, 1) for b in batches)
    rows = list(rows_for(table, n + 16, seed=123, split="test"))
    params = SamplingParams(max_tokens=MAX_TOKENS)
    report = {"device": args.device, "target": TARGET, "draft": DRAFT, "batches": batches, "repeats": repeats,
              "table": str(table) if table else "synthetic", "workloads": {}, "oracle_sweep": {}}
    all_identical = True

    for task in TASKS:
        prompts = [task_prompt(task, r)[0] for r in rows]
        warm, measured = prompts[:16], prompts[16:]
        results = {}
        specs = settings(lambda: list(FREE))
        specs["draft k=4"] = {"method": "draft", "draft_model": str(draft), "num_speculative_tokens": 4}
        specs["draft smartspec"] = {"method": "draft", "draft_model": str(draft)}
        for name, spec in specs.items():
            log(f"{task}: {name}")
            results[name] = run_setting(target, spec, measured, warm, batches, params, args.device, repeats, rounds)
        identical = all(results[s][b]["outputs"] == results["none"][b]["outputs"] for s in results for b in batches)
        all_identical &= identical
        table_rows = compare({k: v for k, v in results.items() if not k.startswith("draft")}, batches)
        for row in table_rows:
            b = row["batch"]
            row["draft k=4"] = round(results["draft k=4"][b]["tokens_per_s"], 1)
            row["draft smartspec"] = round(results["draft smartspec"][b]["tokens_per_s"], 1)
            row["latency none ms"] = round(1000 * results["none"][b]["mean_latency_s"], 1)
            row["latency smartspec ms"] = round(1000 * results["smartspec"][b]["mean_latency_s"], 1)
        print_table(list(table_rows[0]), table_rows, title=f"{task}: tokens/s by setting (outputs identical: {identical})")
        report["workloads"][task] = {
            "table": table_rows, "outputs_identical": identical,
            "runs": strip(results),
        }

    # the oracle sweep: the proposer's acceptance as a dial
    prompts = [task_prompt("describe", r)[0] for r in rows]
    warm, measured = prompts[:16], prompts[16:]
    truth_engine = LLMEngine(str(target), device=args.device, max_num_seqs=max(batches))
    truth_outs = truth_engine.generate(prompts, params)
    truth = {tuple(o.prompt_token_ids): list(o.token_ids) for o in truth_outs}
    vocab = truth_engine.config.vocab_size
    for p in rates:
        results = {}
        for name, spec in settings(lambda: [OracleProposer(truth, p, vocab, seed=7)]).items():
            log(f"oracle p={p}: {name}")
            results[name] = run_setting(target, spec, measured, warm, batches, params, args.device, repeats, rounds)
        identical = all(results[s][b]["outputs"] == results["none"][b]["outputs"] for s in results for b in batches)
        all_identical &= identical
        table_rows = compare(results, batches)
        print_table(list(table_rows[0]), table_rows, title=f"oracle proposer, p = {p}: tokens/s")
        report["oracle_sweep"][str(p)] = {"table": table_rows, "outputs_identical": identical, "runs": strip(results)}

    # the aims, in one place
    ratios = [row["smartspec/best_fixed"] for w in report["workloads"].values() for row in w["table"]] + \
             [row["smartspec/best_fixed"] for s in report["oracle_sweep"].values() for row in s["table"]]
    extract = {row["batch"]: row["smartspec/none"] for row in report["workloads"]["extract"]["table"]}
    at_max = [w["table"][-1]["smartspec/none"] for w in report["workloads"].values()] + \
             [s["table"][-1]["smartspec/none"] for s in report["oracle_sweep"].values()]
    report["summary"] = {
        "outputs_identical": all_identical,
        "smartspec_over_best_fixed_min": min(ratios),
        "smartspec_over_best_fixed_mean": round(statistics.mean(ratios), 3),
        "extract_speedup_over_none_by_batch": ", ".join(f"b={b}: {r}x" for b, r in extract.items()),
        f"smartspec_over_none_at_batch_{max(batches)}_min": min(at_max),
    }
    print_table(["aim", "value"], [[k, v] for k, v in report["summary"].items()], title="Summary")
    write_json(report, args.out, "smartspec")
    groups = {f"{task} b={row['batch']}": {"none": row["none"], **{f"k={k}": row[f"k={k}"] for k in FIXED_KS},
                                            "smartspec": row["smartspec"]}
              for task, w in report["workloads"].items() for row in w["table"]}
    save_bar_chart(groups, "tokens/s", f"SmartSpec vs fixed k ({args.device})", args.out, "smartspec")
    log("done")


if __name__ == "__main__":
    main()

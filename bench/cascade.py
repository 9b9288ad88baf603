"""Model cascades measured honestly: a small and a large model trained here, answering the same SQL call.

Random weights have no meaningful confidence, so both models are tiny checkpoints trained on CPU
(``make_tiny_model(..., train="overall")``, cached after the first run) to answer exactly the prompt that

    SELECT llm_classify(taste, palate, appearance, ['good', 'bad']) FROM beers

sends for a beer review (``engine_backend.tiny_training.overall_prompt``), with the label ``good`` when the
review's review/overall is at least 15/20 (44.6% of the rows). Rows are the held-out ~10% of the reviews of
``../shared/data/llmsql/beer.csv`` (training never saw them; a synthetic beer-like table when the file is missing).

The label is noisy given the three fields: they take only 190 distinct values, and the best any classifier of them
can do on the held-out rows is 82.7% (taste alone: 80.0%, palate alone: 77.0%, always "bad": 55.1%). Size alone
does not separate two models here: every model tried reaches that ceiling within a few hundred steps, down to 4k
parameters. So the small model also sees less: ``SMALL`` is one layer with a 24-token attention window
(Mistral-style sliding window), so from the answer cue it reads palate and appearance but not taste, and its
ceiling is 77.2%; ``LARGE`` is a 4-layer, 2.6M-parameter Llama. Their held-out accuracy, measured at training
time, is in the report (``training``).

Settings, each one SQL query through ``llm_sql.register(con, models={"small": ..., "large": ...})``, with the
result cache off and ``dedup=False`` (the three fields repeat, so with dedup a call would be ~150 prompts and a
200-row calibration sample all of them; with it off every row is a request, as rows of free text would be; the
engine's prefix cache still makes a repeated prompt cheap):

- ``small`` / ``large``: ``{'model': 'small'}`` / ``{'model': 'large'}``;
- ``cascade@0.9``: ``{'model': ['small', 'large'], 'cascade_threshold': 0.9}``;
- ``calibrated``: ``{'model': ['small', 'large'], 'target_precision': 0.9, 'calibration_sample': 200,
  'calibration_seed': S}`` for 20 seeds S. The guarantee (``udf.routing``): with probability >= 0.9 over the
  sample, the small model's accepted answers agree with the large model's on at least 90% of the rows it
  answers. Per seed the report gives the threshold chosen and that precision, measured on every row: among the
  rows whose small-model confidence (``udf.confidence``, from one extra small-model pass) reaches the threshold,
  the share where the small model's answer equals the large model's (vacuously met when it accepts none).

Per setting: accuracy against the labels, agreement with the large model, LLM seconds (the fastest of
``--repeats`` runs; for the calibrated cascade the median over the seeds, one run each), prompt / generated
tokens, LLM calls and ``last_stats(con).rows_by_model``; LLM seconds and prompt tokens also as a ratio to the
large model alone (the baseline, measured in the same run). The cascade rows need the cascade options
(``udf.routing``); a build without them is detected (the option is refused as unknown) and those rows are
skipped with a note.

    python bench/cascade.py                # ~2.9k held-out rows, 20 seeds (the first run also trains, ~2 min)
    python bench/cascade.py --quick        # a small smoke run (tiny under-trained models)
    python bench/cascade.py --device cuda  # the engines on a GPU (training stays on CPU)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import REPO, checkpoint_dir, log, print_table, pyplot, save_png, write_json  # noqa: E402

import duckdb  # noqa: E402
import pyarrow as pa  # noqa: E402

import llm_sql  # noqa: E402
from engine_backend.testing import make_tiny_model  # noqa: E402
from engine_backend.tiny_training import (OVERALL_GOOD_FROM, overall_fields, overall_heldout_rows,  # noqa: E402
                                          overall_label, train_summary)

TABLE = REPO.parent / "shared" / "data" / "llmsql" / "beer.csv"
# (arch, config overrides, training steps)
SMALL = ("mistral", dict(hidden_size=32, num_hidden_layers=1, intermediate_size=64, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=16, sliding_window=24), 300)
LARGE = ("llama", dict(hidden_size=256, num_hidden_layers=4, intermediate_size=512, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=64), 300)
QUICK_SMALL = ("mistral", dict(SMALL[1]), 10)
QUICK_LARGE = ("llama", dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
                             num_key_value_heads=2, head_dim=16), 10)
CALL = "llm_classify(taste, palate, appearance, ['good', 'bad']{options})"
THRESHOLD = 0.9
TARGET = 0.9


def checkpoints(quick: bool, table) -> dict[str, dict]:
    """Train (or fetch from the cache) the two checkpoints; name -> {path, params, steps, seconds, heldout}."""
    out = {}
    for name, (arch, cfg, steps) in (("small", QUICK_SMALL if quick else SMALL),
                                     ("large", QUICK_LARGE if quick else LARGE)):
        path = checkpoint_dir(f"cascade-{name}-{'quick' if quick else 'full'}")
        t0 = time.perf_counter()
        make_tiny_model(path, arch, train="overall", train_table=table, train_steps=steps, **cfg)
        summary = train_summary(path, "overall", table, steps) or {}
        out[name] = {"path": str(path), "arch": arch, "config": cfg, "params": _params(path), "steps": steps,
                     "train_seconds": summary.get("seconds"), "this_run_seconds": round(time.perf_counter() - t0, 1),
                     "heldout_at_training": summary.get("heldout")}
        log(f"{name}: {out[name]['params']:,} parameters, {steps} steps, trained in {out[name]['train_seconds']}s"
            f", held-out accuracy {(summary.get('heldout') or {}).get('accuracy')}")
    return out


def _params(path: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in Path(path).glob("*.safetensors"):
        with safe_open(str(f), "pt") as s:
            for k in s.keys():
                n = 1
                for d in s.get_slice(k).get_shape():
                    n *= int(d)
                total += n
    return total


def load_rows(con, rows: list[dict[str, str]]) -> list[str]:
    """Table ``beers(id, taste, palate, appearance, label)``, every field text as in the CSV; returns the labels."""
    fields = [overall_fields(r) for r in rows]
    labels = [overall_label(r) for r in rows]
    con.register("beers_src", pa.table({
        "id": list(range(len(rows))), **{k: [f[k] for f in fields] for k in ("taste", "palate", "appearance")},
        "label": labels}))
    con.execute("CREATE TABLE beers AS SELECT * FROM beers_src")
    con.unregister("beers_src")
    return labels


def options_sql(options: dict) -> str:
    def lit(v) -> str:
        if isinstance(v, str):
            return "'" + v.replace("'", "''") + "'"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(lit(x) for x in v) + "]"
        return repr(v)

    return ", {" + ", ".join(f"'{k}': {lit(v)}" for k, v in options.items()) + "}" if options else ""


def run(db, con, options: dict, repeats: int = 1) -> tuple[list, dict]:
    """One query, ``repeats`` times (the same answers and counts each time: greedy, result cache off); (answers by
    id, its cost with the fastest run's seconds)."""
    sql = f"SELECT id, {CALL.format(options=options_sql(options))} AS answer FROM beers ORDER BY id"
    best = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        answers = [a for _, a in db.sql(sql).fetchall()]
        seconds = time.perf_counter() - t0
        s = llm_sql.last_stats(con)
        routing = next((st.get("routing") for st in s.stages if st.get("routing")), None) or {}
        cost = {"seconds": round(seconds, 3), "llm_seconds": round(s.llm_seconds, 3),
                "prompt_tokens": s.prompt_tokens, "cached_prompt_tokens": s.cached_prompt_tokens,
                "generated_tokens": s.generated_tokens, "llm_calls": s.llm_calls, "errors": s.errors,
                "rows_by_model": dict(getattr(s, "rows_by_model", {}) or {}), "threshold": routing.get("threshold")}
        if best is None or cost["llm_seconds"] < best[1]["llm_seconds"]:
            best = (answers, cost)
    return best


def cascade_available(db) -> tuple[bool, str]:
    """Whether this build has the cascade options: a build without them refuses the option as unknown."""
    try:
        db.sql(f"SELECT {CALL.format(options=options_sql({'model': ['small', 'large'], 'cascade_threshold': 0.9}))}"
               " FROM beers WHERE id < 2").fetchall()
    except Exception as exc:  # DuckDB wraps the UDF's ValueError in its own exception types
        text = str(exc)
        if "unknown option" in text or "'model' must be a model name" in text:
            return False, text.strip().splitlines()[0][:200]
        raise
    return True, ""


def small_confidence(db, n_rows: int) -> list[float | None]:
    """The small model's confidence in its answer, per row in id order (``udf.batch.evaluate(confidence=True)``,
    the measure a cascade compares with its threshold); an extra pass, not counted in any setting's cost."""
    from udf.batch import evaluate
    from udf.functions import make_call

    rows = db.con.execute("SELECT taste, palate, appearance FROM beers ORDER BY id").fetchall()
    assert len(rows) == n_rows
    call = make_call("llm_classify", field_names=("taste", "palate", "appearance"), labels=["good", "bad"])
    target = db.session.route("small")
    out = evaluate(call, rows, target.backend, settings=db.session.settings, model_id=target.model_id,
                   confidence=True)
    return list(out.confidence)


def score(answers: list, labels: list[str], reference: list | None) -> dict:
    n = len(labels)
    out = {"accuracy": round(sum(a == y for a, y in zip(answers, labels)) / n, 4),
           "answered_good": round(sum(a == "good" for a in answers) / n, 4),
           "nulls": sum(a is None for a in answers)}
    if reference is not None:
        out["agreement_with_large"] = round(sum(a == r for a, r in zip(answers, reference)) / n, 4)
    return out


def accepted_precision(threshold, conf: list, small: list, large: list) -> tuple[float | None, int]:
    """(share of the rows the small model accepts at ``threshold`` where it agrees with the large model, rows
    accepted); None when it accepts none."""
    if threshold is None:
        return None, 0
    pairs = [(s, g) for c, s, g in zip(conf, small, large) if c is not None and c >= float(threshold)]
    return (sum(s == g for s, g in pairs) / len(pairs) if pairs else None), len(pairs)


def by_model(rows: dict | None) -> str:
    """``{'small': 3, 'large': 5}`` as ``small=3 large=5`` (no braces before the JSON on stdout)."""
    return " ".join(f"{k}={v}" for k, v in (rows or {}).items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny under-trained models, few rows and seeds: a smoke run")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--rows", type=int, default=None, help="held-out rows (default all, quick 64)")
    ap.add_argument("--seeds", type=int, default=None, help="calibration seeds (default 20, quick 2)")
    ap.add_argument("--sample", type=int, default=None, help="calibration sample (default 200, quick 16)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="runs of each fixed setting, the fastest kept (default 3, quick 1); calibrated seeds run once")
    args = ap.parse_args()
    quick = args.quick
    seeds = args.seeds or (2 if quick else 20)
    sample = args.sample or (16 if quick else 200)
    repeats = args.repeats or (1 if quick else 3)
    table = TABLE if TABLE.exists() else None
    if table is None:
        log(f"{TABLE} is missing: using the synthetic beer-like table")
    models = checkpoints(quick, table)
    rows = overall_heldout_rows(table)
    n_rows = args.rows or (64 if quick else len(rows))
    rows = rows[:n_rows]

    con = duckdb.connect()
    labels = load_rows(con, rows)
    db = llm_sql.register(con, models={"small": models["small"]["path"], "large": models["large"]["path"]},
                          model="small", dedup=False, cache=False, progress=False, device=args.device)
    report = {"device": args.device, "table": str(table) if table else "synthetic", "rows": n_rows,
              "label": f"good when review/overall >= {OVERALL_GOOD_FROM}/20",
              "labels_good": round(sum(y == "good" for y in labels) / n_rows, 4),
              "call": CALL.format(options=" [, {options}]"), "dedup": False, "result_cache": False,
              "training": {k: {kk: v for kk, v in m.items() if kk != "path"} for k, m in models.items()},
              "settings": {}}

    log("warm-up (not measured)")
    for name in ("small", "large"):
        db.sql(f"SELECT {CALL.format(options=options_sql({'model': name}))} FROM beers WHERE id < 4").fetchall()

    answers: dict[str, list] = {}
    for name in ("large", "small"):
        log(f"{name} only")
        answers[name], cost = run(db, con, {"model": name}, repeats)
        report["settings"][name] = {**cost, **score(answers[name], labels, answers.get("large"))}
    ok, why = cascade_available(db)
    report["cascade_available"] = ok
    calibrated = []
    if not ok:
        report["cascade_skipped"] = why
        log(f"cascade options unavailable in this build, cascade rows skipped: {why}")
    else:
        # --- cascade rows: need udf.routing's options ---
        log(f"cascade, fixed threshold {THRESHOLD}")
        got, cost = run(db, con, {"model": ["small", "large"], "cascade_threshold": THRESHOLD}, repeats)
        report["settings"][f"cascade@{THRESHOLD}"] = {**cost, **score(got, labels, answers["large"])}
        conf = small_confidence(db, n_rows)
        prec, accepted = accepted_precision(THRESHOLD, conf, answers["small"], answers["large"])
        report["settings"][f"cascade@{THRESHOLD}"].update(small_precision_vs_large=prec, small_accepted=accepted)
        for seed in range(seeds):
            log(f"calibrated cascade, target precision {TARGET}, seed {seed}")
            got, cost = run(db, con, {"model": ["small", "large"], "target_precision": TARGET,
                                      "calibration_sample": sample, "calibration_seed": seed})
            prec, accepted = accepted_precision(cost["threshold"], conf, answers["small"], answers["large"])
            calibrated.append({"seed": seed, **cost, **score(got, labels, answers["large"]),
                               "small_precision_vs_large": None if prec is None else round(prec, 4),
                               "small_accepted": accepted, "target_met": prec is None or prec >= TARGET})
        met = sum(c["target_met"] for c in calibrated)
        # means over the seeds; seconds as the median (one run per seed on a shared machine: outliers)
        summary = {k: round(statistics.mean(c[k] for c in calibrated), 4) for k in
                   ("accuracy", "agreement_with_large", "prompt_tokens", "generated_tokens", "llm_calls")}
        summary.update({k: round(statistics.median(c[k] for c in calibrated), 3) for k in ("llm_seconds", "seconds")})
        small_rows = [c["rows_by_model"].get("small", 0) for c in calibrated]
        report["settings"]["calibrated"] = {**summary, "seeds": seeds, "calibration_sample": sample,
                                            "target_precision": TARGET, "target_met": f"{met}/{seeds}",
                                            "seeds_accepting_none": sum(c["small_accepted"] == 0 for c in calibrated),
                                            "small_rows_mean": round(statistics.mean(small_rows), 1),
                                            "thresholds": [c["threshold"] for c in calibrated]}
        report["calibrated_seeds"] = calibrated

    # every setting against the large model alone, measured above in this run
    large = report["settings"]["large"]
    for v in report["settings"].values():
        v.update({f"{k}_vs_large": round(v[k] / large[k], 3) if large[k] else None
                  for k in ("llm_seconds", "prompt_tokens")})
    headers = ["setting", "accuracy", "agreement_with_large", "llm_seconds", "llm_seconds_vs_large", "seconds",
               "prompt_tokens", "prompt_tokens_vs_large", "generated_tokens", "llm_calls", "rows_by_model"]
    table_rows = [{"setting": k, **v, "rows_by_model": by_model(v.get("rows_by_model")) or
                   (f"small={v['small_rows_mean']} (mean)" if "small_rows_mean" in v else "")}
                  for k, v in report["settings"].items()]
    print_table(headers, table_rows, title=f"llm_classify over {n_rows} held-out beer reviews ({args.device})")
    train_rows = [{"model": k, "arch": m["arch"], "params": m["params"], "steps": m["steps"],
                   "train_seconds": m["train_seconds"],
                   "heldout_accuracy": (m["heldout_at_training"] or {}).get("accuracy")}
                  for k, m in models.items()]
    print_table(list(train_rows[0]), train_rows, title="Training (CPU; seconds as measured when first trained)")
    if calibrated:
        print_table(["seed", "threshold", "small_accepted", "small_precision_vs_large", "target_met", "accuracy",
                     "llm_seconds", "rows_by_model"],
                    [{**c, "rows_by_model": by_model(c["rows_by_model"])} for c in calibrated],
                    title=f"Calibrated cascade, target precision {TARGET}, sample {sample}: "
                          f"met on {report['settings']['calibrated']['target_met']} seeds "
                          f"({report['settings']['calibrated']['seeds_accepting_none']} of them accept no "
                          f"small-model answer: vacuously)")
    else:
        print("\ncascade rows skipped: this build has no cascade options", flush=True)
    write_json(report, args.out, "cascade")
    plot(report, args.out)
    log("done")


def plot(report: dict, out: str) -> None:
    plt = pyplot()
    names = list(report["settings"])
    fig, axes = plt.subplots(1, 3 if report.get("calibrated_seeds") else 2, figsize=(13, 4))
    for ax, key, label in ((axes[0], "accuracy", "accuracy vs labels"), (axes[1], "llm_seconds", "LLM seconds")):
        bars = ax.bar(names, [report["settings"][n][key] for n in names])
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
        ax.set_title(label)
        ax.tick_params(axis="x", labelrotation=20)
    if report.get("calibrated_seeds"):
        seeds = report["calibrated_seeds"]
        ax = axes[2]
        ax.scatter([c["seed"] for c in seeds], [c["small_precision_vs_large"] or 1.0 for c in seeds],
                   c=["tab:green" if c["target_met"] else "tab:red" for c in seeds])
        ax.axhline(TARGET, color="grey", linestyle="--")
        ax.set_xlabel("calibration seed")
        ax.set_title("precision of accepted small answers vs large")
    fig.suptitle(f"Model cascade, llm_classify on {report['rows']} held-out rows ({report['device']})")
    save_png(fig, "cascade", out)


if __name__ == "__main__":
    main()

"""The published LLM-SQL query types, end to end through DuckDB, in three configurations measured in one run.

Queries (arXiv 2403.05821's workload) on ``../shared/data/llmsql/beer.csv`` and ``movies_small.csv``, every
column read as text (``all_varchar=true``):

- filter:      ``SELECT ... WHERE llm_filter(instruction, <all fields>)``
- projection:  ``SELECT llm(instruction, <all fields>) FROM t``
- multi:       an LLM filter, then an LLM projection on the rows it keeps
- aggregation: ``SELECT key, AVG(llm_score(instruction, <fields>)) FROM t GROUP BY key``

Configurations, each on a fresh engine prefix cache and with the persistent result cache OFF:

- ``no_cache``:       no prefix cache, original order (``optimize=False``: per-row UDF, no dedup, no reordering)
- ``cache_original``: prefix cache, original order, no dedup (``optimize=False``)
- ``optimized``:      prefix cache, full optimisation (rewriting, dedup, reordering of rows and of the fields
                      inside each prompt: ``reorder_fields=True``)

- ``optimized_rows``: as ``optimized`` but with the written field order (``reorder_fields=False``, the default):
                      rows reordered only

The model is a random-weight Llama made by ``make_tiny_model`` (hidden 256, 4 layers, a few million parameters
besides its embedding; ``--size 24m``: hidden 512, 8 layers) so that a run takes minutes on a CPU; its answers
are nonsense, the work (tokens, prefix hits, time) is real. On a model this small the fixed cost per request
weighs more than on a real one, so the runtime ratios understate what the saved prefill tokens are worth on a
large model.

Tokenisation decides the prefix hits, so the checkpoint carries a real vocabulary: ``--tokenizer qwen2``
(default: Qwen's 151,643-token BPE) or ``gpt2``; ``trained`` is the old 512-token BPE trained on the fly. Each
prompt goes out as a real deployment sends it: the udf layout (system prompt, task, fields, answer cue) in the
checkpoint's chat template, the system prompt as the system message (``--no-chat`` sends the bare layout).

Per query and configuration the report gives, side by side:

- ``est_cells``: the optimiser's own figure, GGR's objective over the cells as sent (PHC / sum of len^2, fields
  only: the shared head is not in it);
- ``est_chars``: the characters of each prompt found as a prefix of an earlier prompt (head included);
- ``ideal_tokens``: the engine's block-level rule (whole blocks of ``--block-size`` tokens, the last token always
  computed) over the tokenised prompts with a cache that never evicts. With such a cache the misses are the
  distinct block chains, whatever the row order: this is the ceiling any row order could reach for these
  prompts under that block size;
- ``hit_rate``: what the engine measured.

``est_chars - ideal_tokens`` is what tokenisation and block granularity cost; ``ideal_tokens - hit_rate`` what
the engine lost to scheduling (prompts admitted in the same step cannot reuse each other's blocks) and eviction.

    python bench/llm_sql_queries.py [--quick] [--rows N] [--model DIR | --size tiny|24m] [--tokenizer qwen2|gpt2|trained]
                                    [--queries beer_filter,...] [--configs no_cache,...] [--block-size 16]
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import LLAMA_24M, REPO, checkpoint_dir, log, print_table, save_bar_chart, write_json  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "llmsql"
TINY = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
            intermediate_size=704, max_position_embeddings=4096)

# Every column, in the CSV's order (the published setup: the original field order is the table's).
BEER_FIELDS = ['"review/profileName"', '"review/time"', '"review/overall"', '"review/taste"', '"review/palate"',
               '"review/appearance"', '"beer/name"', '"beer/style"', '"beer/beerId"']
MOVIE_FIELDS = ["rotten_tomatoes_link", "review_content", "movie_title", "movie_info", "id"]


def queries(beer_rows: int, movie_rows: int) -> dict[str, dict]:
    bf, mf = ", ".join(BEER_FIELDS), ", ".join(MOVIE_FIELDS)
    beer_f = "Based on the beer descriptions, does this beer have European origin? Answer yes or no."
    beer_p = "Based on the beer review, describe the flavour profile of the beer in a few words."
    movie_f = "Given the following fields of a movie description and a user review, is the review positive?"
    movie_p = "Given information including movie descriptions and critic reviews, summarise the appeal of the movie."
    return {
        "beer_filter": dict(table="beer", rows=beer_rows,
                            sql=f"SELECT \"beer/name\" FROM beer WHERE llm_filter('{beer_f}', {bf})"),
        "beer_projection": dict(table="beer", rows=beer_rows, sql=f"SELECT llm('{beer_p}', {bf}) AS d FROM beer"),
        "beer_multi": dict(table="beer", rows=beer_rows,
                           sql=f"SELECT llm('{beer_p}', {bf}) AS d FROM beer WHERE llm_filter('{beer_f}', {bf})"),
        "beer_aggregation": dict(table="beer", rows=beer_rows, sql=(
            f"SELECT \"beer/style\", AVG(llm_score('Rate how much the reviewer liked this beer.', {bf})) AS s "
            f"FROM beer GROUP BY \"beer/style\"")),
        "movies_filter": dict(table="movies", rows=movie_rows,
                              sql=f"SELECT movie_title FROM movies WHERE llm_filter('{movie_f}', {mf})"),
        "movies_projection": dict(table="movies", rows=movie_rows,
                                  sql=f"SELECT llm('{movie_p}', {mf}) AS d FROM movies"),
        "movies_multi": dict(table="movies", rows=movie_rows, sql=(
            f"SELECT llm('{movie_p}', {mf}) AS d FROM movies WHERE llm_filter('{movie_f}', {mf})")),
        "movies_aggregation": dict(table="movies", rows=movie_rows, sql=(
            f"SELECT movie_title, AVG(llm_score('Rate the sentiment of the review.', {mf})) AS s "
            f"FROM movies GROUP BY movie_title")),
    }


CONFIGS = {
    "no_cache": dict(prefix_cache=False, options=dict(optimize=False)),
    "cache_original": dict(prefix_cache=True, options=dict(optimize=False)),
    # full optimisation: GGR-style row AND per-row field order (reorder_fields; udf's default keeps the written
    # field order so that answers equal the plain run's)
    "optimized": dict(prefix_cache=True, options=dict(optimize=True, reorder_fields=True)),
    "optimized_rows": dict(prefix_cache=True, options=dict(optimize=True, reorder_fields=False)),
}


SIZES = {"tiny": ("llama-tiny-256x4", TINY), "24m": ("llama-24m", LLAMA_24M)}
TOKENIZER_CHOICES = ("qwen2", "gpt2", "trained")
DEFAULT_TOKENIZER = "qwen2"


def model_dir(arg: str | None, size: str = "tiny", tokenizer: str = DEFAULT_TOKENIZER) -> str:
    """The checkpoint: ``arg`` when given, else a random Llama of ``size`` with the ``tokenizer`` vocabulary
    (made once; a real vocabulary ties the LM head to the embedding, which is vocabulary x hidden)."""
    if arg:
        return arg
    name, config = SIZES[size]
    if tokenizer != "trained":
        name, config = f"{name}-{tokenizer}", dict(config, tie_word_embeddings=True)
    path = checkpoint_dir(name)
    if not (path / "config.json").is_file():
        from engine_backend.testing import make_tiny_model

        log(f"creating {path}")
        make_tiny_model(path, arch="llama", tokenizer=tokenizer, **config)
    return str(path)


def model_note(model: str, arg: str | None, size: str, tokenizer: str) -> str:
    if arg:
        return arg
    from engine_backend.loader import load_model

    n = sum(p.numel() for p in load_model(model).parameters())
    vocab = {"qwen2": "Qwen2 vocabulary (151,936 rows)", "gpt2": "GPT-2 vocabulary (50,257 rows)",
             "trained": "512-token BPE trained on the fly"}[tokenizer]
    dims = {"tiny": "hidden 256, 4 layers", "24m": "hidden 512, 8 layers"}[size]
    return f"random-weight Llama (make_tiny_model, {dims}, {n / 1e6:.1f}M parameters, {vocab})"


class ChatLayout:
    """A deployment's prompt: the udf layout inside the checkpoint's chat template (system prompt as the system
    message, the rest as the user message, the assistant turn opened). ``split()`` gives the text before and
    after the user message, for backends (Spark's node server) that only take the udf's ``system`` option."""

    def __init__(self, tokenizer) -> None:
        from udf.prompts import DEFAULT_SYSTEM

        self.tokenizer = tokenizer
        self.system = DEFAULT_SYSTEM

    def __call__(self, prompt: str) -> str:
        head = self.system + "\n\n"
        if prompt.startswith(head):
            messages = [{"role": "system", "content": self.system}, {"role": "user", "content": prompt[len(head):]}]
        else:
            messages = [{"role": "user", "content": prompt}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    def split(self) -> tuple[str, str]:
        marker = "\x00"
        text = self.tokenizer.apply_chat_template(
            [{"role": "system", "content": self.system}, {"role": "user", "content": marker}])
        before, after = text.split(marker)
        return before, after


class RecordingBackend:
    """Wraps an embedded backend: applies ``layout`` to each prompt and keeps the prompts in the order sent."""

    def __init__(self, inner, layout=None) -> None:
        self.inner, self.layout, self.name, self.prompts = inner, layout, inner.name, []

    @property
    def engine(self):
        return self.inner.engine

    def generate(self, requests, progress: bool = False):
        from engine_backend.backends.base import GenerationRequest

        if self.layout is not None:
            requests = [GenerationRequest(prompt=self.layout(r.prompt), params=r.params) for r in requests]
        self.prompts += [r.prompt for r in requests]
        return self.inner.generate(requests, progress=progress)

    def stats(self):
        return self.inner.stats()

    def close(self) -> None:
        self.inner.close()


FIELD_LINE = re.compile(r'^("(?:[^"\\]|\\.)*"): (.*)$')


def prompt_estimates(prompts: list[str], tokenizer, block_size: int) -> dict:
    """The optimiser-side figures for prompts in the order sent (see the module doc): est_cells, est_chars,
    ideal_tokens (the block-level ceiling), and the prompt tokens."""
    from types import SimpleNamespace

    import pandas as pd

    from optimizer.metrics import cell_hit_rate, token_hit_rate, trie_hit_rate

    rows, names = [], []
    for p in prompts:  # the fields are the '"name": value' lines between "Input:" and the answer cue
        body = p.split("\nInput:\n", 1)[-1].split("\n\n", 1)[0]
        cells = [m.groups() for m in map(FIELD_LINE.match, body.split("\n")) if m]
        names.append(tuple(n for n, _ in cells))
        rows.append({n: v for n, v in cells})
    est_cells = None
    if rows and all(set(r) == set(rows[0]) for r in rows):
        df = pd.DataFrame(rows, dtype=object)[list(names[0])]
        est_cells = cell_hit_rate(df, SimpleNamespace(order=list(range(len(rows))), fields=names))
    toks = tokenizer.encode_batch(prompts, add_special_tokens=True) if prompts else []
    n_tok = sum(map(len, toks))
    return dict(est_cells=None if est_cells is None else round(est_cells, 4),
                est_chars=round(trie_hit_rate(prompts), 4),
                ideal_tokens=round(token_hit_rate(toks, block_size), 4),
                ideal_tokens_sorted=round(token_hit_rate(sorted(toks), block_size), 4),
                prompts=len(prompts), prompt_tokens_est=n_tok,
                tokens_per_prompt=round(n_tok / len(prompts), 1) if prompts else 0.0)


def run_queries(con, qs: dict[str, dict], counts: dict[str, int], model: str, configs: dict[str, dict], *,
                block_size: int = 16, kv_cache_memory: str = "2GB", max_tokens: int = 8, chat: bool = True,
                tag: str = "", keep_prompts: bool = False, repeat: int = 1) -> list[dict]:
    """Each (query, configuration) on a fresh prefix cache; one row of figures per run (see the module doc).
    ``keep_prompts``: each row also holds the prompts as sent (``sent_prompts``). ``repeat``: the configurations
    run in turn that many times and each keeps its fastest run (``seconds_all`` lists them): on a shared machine
    the minimum is the figure least disturbed by others."""
    import llm_sql
    from engine_backend.backends import make_backend

    engines = {}
    for pc in sorted({c["prefix_cache"] for c in configs.values()}):
        inner = make_backend("embedded", model=model, kv_cache_memory=kv_cache_memory, enable_prefix_caching=pc,
                             block_size=block_size)
        engines[pc] = RecordingBackend(inner, ChatLayout(inner.engine.tokenizer) if chat else None)
        engines[pc].generate([])  # nothing: loading is not timed
    best: dict[tuple[str, str], dict] = {}
    for qname, q in qs.items():
        for cname, cfg in [(c, v) for _ in range(max(1, repeat)) for c, v in configs.items()]:
            backend = engines[cfg["prefix_cache"]]
            backend.engine.reset_prefix_cache()
            backend.prompts = []
            db = llm_sql.register(con, backend=backend, cache=False, progress=False, max_tokens=max_tokens,
                                  **cfg["options"])
            start = time.perf_counter()
            out = db.sql(q["sql"]).fetchall()
            seconds = time.perf_counter() - start
            s = llm_sql.last_stats(con)
            row = dict(query=qname, config=cname, rows=counts[q["table"]], result_rows=len(out),
                       seconds=round(seconds, 3), llm_calls=s.llm_calls, prompt_tokens=s.prompt_tokens,
                       cached_prompt_tokens=s.cached_prompt_tokens, hit_rate=round(s.prefix_hit_rate, 4),
                       generated_tokens=s.generated_tokens, solve_seconds=round(s.solve_seconds, 4),
                       llm_seconds=round(s.llm_seconds, 3), errors=s.errors, block_size=block_size)
            row["tokens_per_prompt"] = round(s.prompt_tokens / s.llm_calls, 1) if s.llm_calls else 0.0
            if cfg["prefix_cache"]:
                row.update({k: v for k, v in prompt_estimates(backend.prompts, backend.engine.tokenizer,
                                                              block_size).items() if k != "tokens_per_prompt"})
            if keep_prompts:
                row["sent_prompts"] = list(backend.prompts)
            prev = best.get((qname, cname))
            row["seconds_all"] = (prev["seconds_all"] if prev else []) + [row["seconds"]]
            if prev is None or row["seconds"] < prev["seconds"]:
                best[(qname, cname)] = row
            else:
                prev["seconds_all"] = row["seconds_all"]
            log(f"{tag}{qname:20s} {cname:15s} {seconds:8.2f} s  calls {s.llm_calls:5d}  "
                f"tok/prompt {row['tokens_per_prompt']:6.1f}  hit {s.prefix_hit_rate:.1%}"
                + (f"  ideal {row['ideal_tokens']:.1%}  chars {row['est_chars']:.1%}" if cfg["prefix_cache"] else ""))
    for backend in engines.values():
        backend.close()
    results = list(best.values())
    return results


def load_tables(con, qs: dict[str, dict], beer_rows: int, movie_rows: int) -> dict[str, int]:
    for table, csv, rows in (("beer", "beer.csv", beer_rows), ("movies", "movies_small.csv", movie_rows)):
        if any(q["table"] == table for q in qs.values()):
            con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM read_csv('{DATA / csv}', all_varchar=true) "
                        f"LIMIT {int(rows)}")
    return {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchall()[0][0]
            for t in ("beer", "movies") if any(q["table"] == t for q in qs.values())}


def _ratio(a, b):
    return round(a / b, 2) if a and b else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="200 rows a table: a smoke run")
    ap.add_argument("--rows", type=int, default=None, help="rows of beer.csv (default 2000; movies: all 1019)")
    ap.add_argument("--movie-rows", type=int, default=None)
    ap.add_argument("--model", default=None, metavar="DIR", help="a model directory (default: tiny random Llama)")
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny",
                    help="the random checkpoint without --model: tiny (hidden 256, 4 layers) or 24m (hidden 512, 8 layers)")
    ap.add_argument("--tokenizer", choices=TOKENIZER_CHOICES, default=DEFAULT_TOKENIZER,
                    help="the random checkpoint's vocabulary (default qwen2; trained: the old 512-token BPE)")
    ap.add_argument("--no-chat", action="store_true", help="send the bare udf layout, without the chat template")
    ap.add_argument("--queries", default=None, help="comma-separated subset, e.g. beer_filter")
    ap.add_argument("--configs", default=None, help=f"comma-separated subset of {', '.join(CONFIGS)}")
    ap.add_argument("--max-tokens", type=int, default=8, help="longest llm() answer (default 8)")
    ap.add_argument("--kv-cache-memory", default="2GB")
    ap.add_argument("--block-size", type=int, default=16, help="tokens per KV page (the prefix-hit granularity)")
    ap.add_argument("--repeat", type=int, default=1, help="run the configurations in turn N times, keep each one's "
                                                          "fastest (for a shared machine)")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args(argv)

    import duckdb

    beer_rows = args.rows or (200 if args.quick else 2000)
    movie_rows = args.movie_rows or (200 if args.quick else 100_000)
    qs = queries(beer_rows, movie_rows)
    if args.queries:
        wanted = args.queries.split(",")
        unknown = [q for q in wanted if q not in qs]
        if unknown:
            ap.error(f"unknown queries {unknown}; choose from {', '.join(qs)}")
        qs = {k: qs[k] for k in wanted}
    configs = CONFIGS
    if args.configs:
        configs = {k: CONFIGS[k] for k in args.configs.split(",") if k in CONFIGS}
        if len(configs) != len(args.configs.split(",")):
            ap.error(f"unknown configs in {args.configs}; choose from {', '.join(CONFIGS)}")
    model = model_dir(args.model, args.size, args.tokenizer)
    log(f"model {model}")

    con = duckdb.connect()
    counts = load_tables(con, qs, beer_rows, movie_rows)
    log(f"tables {counts}")
    results = run_queries(con, qs, counts, model, configs, block_size=args.block_size,
                          kv_cache_memory=args.kv_cache_memory, max_tokens=args.max_tokens, chat=not args.no_chat,
                          repeat=args.repeat)

    by = {(r["query"], r["config"]): r for r in results}
    summary = []
    for qname in qs:
        runs = {c: by[(qname, c)] for c in configs}
        op = runs.get("optimized") or next(iter(runs.values()))
        row = dict(query=qname, rows=op["rows"], tokens_per_prompt=op["tokens_per_prompt"])
        for c, r in runs.items():
            row[f"{c}_s"] = r["seconds"]
        for c, r in runs.items():
            if c != "no_cache":
                row[f"hit_{c}"] = r["hit_rate"]
                row[f"ideal_{c}"] = r.get("ideal_tokens")
        if "optimized" in runs:
            row["est_cells_optimized"] = runs["optimized"].get("est_cells")
            row["est_chars_optimized"] = runs["optimized"].get("est_chars")
            for base in ("no_cache", "cache_original"):
                if base in runs:
                    row[f"speedup_vs_{base}"] = _ratio(runs[base]["seconds"], runs["optimized"]["seconds"])
        if "optimized_rows" in runs:
            for base in ("no_cache", "cache_original"):
                if base in runs:
                    row[f"rows_only_speedup_vs_{base}"] = _ratio(runs[base]["seconds"],
                                                                runs["optimized_rows"]["seconds"])
        row["calls_original"] = runs.get("cache_original", op)["llm_calls"]
        row["calls_optimized"] = op["llm_calls"]
        row["solve_s"] = op["solve_seconds"]
        summary.append(row)
    sq = {r["query"]: r for r in summary}
    aims = {}
    if "beer_filter" in sq:
        b = sq["beer_filter"]
        aims["beer_filter"] = dict(
            rows=b["rows"], rows_at_least_2000=b["rows"] >= 2000,
            hit_rate_ge_80=(b.get("hit_optimized") or 0) >= 0.80, ceiling_optimized=b.get("ideal_optimized"),
            speedup_vs_cache_original_ge_2=(b.get("speedup_vs_cache_original") or 0) >= 2.0,
            speedup_vs_no_cache_ge_3_8=(b.get("speedup_vs_no_cache") or 0) >= 3.8)
    for q in ("movies_filter", "movies_projection"):
        if q in sq:
            aims[q] = dict(rows=sq[q]["rows"], hit_rate_ge_85=(sq[q].get("hit_optimized") or 0) >= 0.85,
                           ceiling_optimized=sq[q].get("ideal_optimized"))
    data = dict(benchmark="llm_sql_queries", model=model,
                model_note=model_note(model, args.model, args.size, args.tokenizer)
                + ": answers are nonsense, the work is real",
                tokenizer=None if args.model else args.tokenizer, chat_template=not args.no_chat,
                block_size=args.block_size, max_tokens=args.max_tokens, repeat=args.repeat,
                configs={k: dict(prefix_cache=v["prefix_cache"], **v["options"], result_cache=False)
                         for k, v in configs.items()},
                runs=results, summary=summary, aims=aims)
    write_json(data, args.out, "llm_sql_queries")
    heads = ["query", "rows", "tokens_per_prompt"] + [f"{c}_s" for c in configs] + [
        h for h in ("speedup_vs_no_cache", "speedup_vs_cache_original", "rows_only_speedup_vs_cache_original")
        if any(h in r for r in summary)]
    print_table(heads, summary, title="LLM-SQL queries: the configurations, same engine, same run")
    hit_heads = ["query", "config", "tokens_per_prompt", "est_cells", "est_chars", "ideal_tokens", "hit_rate"]
    print_table(hit_heads, [r for r in results if r["config"] != "no_cache"],
                title=f"Prefix hits: the optimiser's estimates beside the engine's measure (block {args.block_size}; "
                      "ideal_tokens = the ceiling of any row order for these prompts)")
    save_bar_chart({r["query"]: {c: r[f"{c}_s"] for c in configs} for r in summary},
                   ylabel="seconds", title=f"LLM-SQL queries (tiny random Llama, {args.tokenizer} vocabulary, CPU)",
                   out=args.out, name="llm_sql_queries")
    return 0


if __name__ == "__main__":
    sys.exit(main())

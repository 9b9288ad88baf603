"""``llm-sql demo``: an LLM filter in DuckDB on the embedded engine, optimised and plain.

It runs the query through the optimiser (dedup, row order, one ordered stream, prefix-cache hits) and
compares a sample against the plain per-row evaluation by what a user pays for: LLM calls, prompt
tokens computed, generated tokens and seconds, with real token counts and timings.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

INSTRUCTION = (
    "Classify the sentiment of this beer review as positive or negative. A review is positive when the "
    "reviewer enjoyed the beer overall and would drink it again, even if they mention small flaws; it is "
    "negative when the flaws dominate, when the beer is described as stale, sour by accident, watery, "
    "skunked or undrinkable, or when the reviewer says they would not buy it again. Judge the beer itself, "
    "not the bar, the price or the bottle design. Answer with one word."
)

REVIEWS = [
    "Crisp, clean pilsner with a lovely floral hop finish.",
    "Tasted like wet cardboard, poured half of it away.",
    "Rich coffee and chocolate notes, a stout I will buy again.",
    "Flat and overly sweet, no carbonation at all.",
    "Bright citrus IPA, juicy and balanced, great on a hot day.",
    "Skunky aroma from the first sip, clearly light-struck.",
    "Smooth amber ale with caramel malt, very drinkable.",
    "Watery lager with almost no flavour, disappointing.",
    "Belgian tripel with banana and clove, dangerously easy to drink.",
    "Harsh alcohol burn and a metallic aftertaste.",
    "Refreshing wheat beer, hazy and full of lemon zest.",
    "Stale hops, the bottle must have sat on a shelf for a year.",
    "Perfect porter for winter, roasty and warming.",
    "Sour in a bad way, it tasted infected.",
    "Delicate saison, peppery and dry, excellent with food.",
    "Thin body and a soapy finish, would not order again.",
    "Hoppy pale ale with pine and grapefruit, really good.",
    "Cloying and syrupy, gave me a headache after one glass.",
    "A beautiful Czech lager, bready malt and a crisp bite.",
    "Smelled like vinegar and tasted worse.",
    "Creamy nitro stout, velvety and smooth.",
    "Bland, forgettable and overpriced for what it is.",
    "Tart raspberry sour, well made and refreshing.",
    "Burnt rubber flavour, something went wrong in the brewery.",
    "Nutty brown ale, comforting and well balanced.",
    "Diacetyl bomb, buttery in the worst possible way.",
    "Session IPA that keeps its hop flavour, a new favourite.",
    "Muddy, murky and tasted of yeast more than anything.",
    "Clean Kolsch, subtle fruit and a soft finish, lovely.",
    "Far too bitter with nothing to balance it.",
    "Imperial stout with vanilla and bourbon, superb.",
    "Tasted like dishwater, the worst beer I have had this year.",
    "Gentle English bitter, biscuity malt, I ordered a second pint.",
    "Overcarbonated and fizzy like soda, with no malt backbone.",
    "Hazy double IPA bursting with mango and passion fruit.",
    "Oxidised and papery, the can was clearly old.",
    "Dark mild, low in alcohol but full of flavour, great.",
    "Chemical taste, like a swimming pool.",
    "Smoky rauchbier, intense but wonderfully done.",
    "Sickly sweet fruit beer, tasted artificial.",
    "Dry Irish stout, roasty and crisp, a classic.",
    "Rough, astringent finish that lingered unpleasantly.",
    "Vienna lager with toasty malt, easy and satisfying.",
    "Smelled of sulphur and never cleared up.",
    "Gose with a touch of salt and coriander, very refreshing.",
    "Heavy and muddy, like drinking bread soup.",
    "Barleywine with toffee and dried fruit, worth the wait.",
    "No head, no aroma, no reason to drink it.",
    "Hefeweizen with soft banana, a perfect summer beer.",
    "Medicinal and plastic-like, poured it out.",
    "West coast IPA, resinous and bitter, exactly right.",
    "Weak and watery, tasted like a diluted macro lager.",
    "Oatmeal stout, silky with a hint of cocoa, delicious.",
    "Sharp sourness from a contaminated keg, undrinkable.",
    "Golden ale, light honey notes, pleasant and refreshing.",
    "Cabbage smell, clearly a bad batch.",
    "Rye pale ale, spicy and complex, I loved it.",
    "Boring and thin, I would choose water instead.",
    "Baltic porter, smooth dark fruit and liquorice, excellent.",
    "Burnt popcorn aroma, a flawed beer.",
    "Fresh hop ale, grassy and vibrant, a seasonal treat.",
    "Sweet like candy and flat, gave up halfway.",
    "Dunkel with soft caramel and bread crust, very nice.",
    "Acrid smoke and ash, not in a good way.",
]
LABELS = ["positive", "negative"]


STYLES = ["Pilsner", "Stout", "IPA", "Lager", "Amber Ale", "Porter", "Wheat Beer", "Sour"]
BREWERIES = ["Hill Farm", "Old Mill", "Riverside", "North Gate"]


def demo_rows(n: int = 256) -> list[tuple]:
    """The built-in table: ``n`` rows over the 64 reviews, so reviews, styles and breweries repeat (what dedup and
    reordering feed on). Columns: id, brewery, style, review, stars."""
    out = []
    for i in range(n):
        r = (i * 7) % len(REVIEWS)  # every review appears about n/64 times, not in runs
        out.append((i, BREWERIES[r % len(BREWERIES)], STYLES[r % len(STYLES)], REVIEWS[r], 1 + (r * 3) % 5))
    return out


FILTER_INSTRUCTION = ("Is this beer review positive? The reviewer enjoyed the beer overall and would drink it again, "
                      "even if they mention small flaws. Judge the beer itself, not the bar, the price or the bottle.")


def demo_query(table: str, columns: list[str]) -> str:
    fields = ", ".join(f'"{c}"' for c in columns)
    return f"SELECT * FROM {table} WHERE llm_filter('{FILTER_INSTRUCTION}', {fields})"


def _load(con, csv: str | None, rows: int) -> tuple[str, list[str]]:
    if csv is None:
        con.execute("CREATE TABLE reviews (id INTEGER, brewery VARCHAR, style VARCHAR, review VARCHAR, stars INTEGER)")
        con.executemany("INSERT INTO reviews VALUES (?, ?, ?, ?, ?)", demo_rows(rows))
        return "reviews", ["style", "review"]
    path = str(Path(csv).expanduser()).replace("'", "''")
    con.execute(f"CREATE TABLE data AS SELECT * FROM read_csv('{path}', all_varchar=true) LIMIT {int(rows)}")
    columns = [r[0] for r in con.execute("DESCRIBE data").fetchall()]
    # the filter reads the four columns with the fewest distinct values (more than one): repeats to exploit
    counts = con.execute("SELECT " + ", ".join(f'COUNT(DISTINCT "{c}")' for c in columns) + " FROM data").fetchall()[0]
    ranked = sorted((n, i) for i, n in enumerate(counts) if n > 1)[:4]
    return "data", [columns[i] for _, i in sorted(ranked, key=lambda t: t[1])] or columns[:1]


def _time_run(con, backend, sql: str, **options) -> tuple[float, "object"]:
    import llm_sql

    backend.engine.reset_prefix_cache()  # a fresh prefix cache for each timed run
    db = llm_sql.register(con, backend=backend, cache=False, progress=False, **options)
    start = time.perf_counter()
    db.sql(sql).fetchall()
    return time.perf_counter() - start, llm_sql.last_stats(con)


def computed_prompt_tokens(stats) -> int:
    """Prompt tokens the engine actually ran: those its prefix cache did not serve."""
    return stats.prompt_tokens - stats.cached_prompt_tokens


def _ratio(before: float, after: float, better: str, worse: str) -> str:
    if before <= 0 or after <= 0:
        return "-"
    return f"{before / after:.1f}x {better}" if before >= after else f"{after / before:.1f}x {worse}"


def comparison(plain_seconds: float, plain, opt_seconds: float, opt) -> str:
    """The unoptimised and optimised runs side by side in what a user pays for: calls, computed tokens, time."""
    fewer = ("d", "fewer", "more")
    rows = [("LLM calls", plain.llm_calls, opt.llm_calls, *fewer),
            ("prompt tokens computed", computed_prompt_tokens(plain), computed_prompt_tokens(opt), *fewer),
            ("generated tokens", plain.generated_tokens, opt.generated_tokens, *fewer),
            ("seconds", plain_seconds, opt_seconds, ".2f", "faster", "slower")]
    lines = [f"  {'':24}{'unoptimised':>12}{'optimised':>11}  ratio"]
    for label, before, after, fmt, better, worse in rows:
        lines.append(f"  {label:<24}{before:>12{fmt}}{after:>11{fmt}}  {_ratio(before, after, better, worse)}")
    # the optimised hit rate is lower although it computes fewer tokens: say why, so it does not read as a loss
    lines.append(f"  prefix hit rate {plain.prefix_hit_rate:.1%} -> {opt.prefix_hit_rate:.1%}: it is over the prompts "
                 "sent, and dedup sent fewer (the repeats it dropped were hits)")
    return "\n".join(lines)


def run_demo(model: str, csv: str | None = None, rows: int = 256, sample: int = 128, **engine_kwargs) -> int:
    """An LLM filter over a table, optimised, with its statistics and a comparison with plain per-row evaluation."""
    import duckdb

    import llm_sql
    from engine_backend.backends import make_backend

    print("llm-sql demo: a tiny random model answers nonsense; the point is the mechanism "
          "(dedup, reordering, prefix-cache hits), which is real.", file=sys.stderr)
    con = duckdb.connect()
    table, columns = _load(con, csv, rows)
    sql = demo_query(table, columns)
    with make_backend("embedded", model=model, **engine_kwargs) as backend:
        db = llm_sql.register(con, backend=backend, cache=False, progress=False)
        n_rows = con.execute(f"SELECT COUNT(*) FROM {table}").fetchall()[0][0]
        print(f"query over {n_rows} rows of {csv or 'the built-in reviews table'}:\n  {sql}\n")
        rel = db.sql(sql)
        result = rel.fetchall()
        stats = llm_sql.last_stats(con)
        from llm_sql.display import format_result

        print(format_result(list(rel.columns), result, max_rows=8, width=40))
        print()
        print(f"requests            {stats.llm_calls}  ({stats.errors} errors)")
        print(stats.summary())
        computed = computed_prompt_tokens(stats) + stats.generated_tokens
        secs = stats.llm_seconds
        print(f"tokens/s            {computed / secs if secs else 0.0:.0f} computed, "
              f"{stats.generated_tokens / secs if secs else 0.0:.0f} generated")

        # optimised vs plain per-row evaluation, on a sample, each with a fresh engine prefix cache
        con.execute(f"CREATE TABLE sample AS SELECT * FROM {table} ORDER BY hash(rowid) LIMIT {int(sample)}")
        n_sample = con.execute("SELECT COUNT(*) FROM sample").fetchall()[0][0]
        sample_sql = demo_query("sample", columns)
        plain_s, plain = _time_run(con, backend, sample_sql, optimize=False)
        opt_s, opt = _time_run(con, backend, sample_sql)
        print()
        print(f"on a sample of {n_sample} rows (fresh prefix cache each):")
        print(comparison(plain_s, plain, opt_s, opt))
    con.close()
    return 0

"""``llm-sql demo``: one batch of prompts with a long shared prefix through the embedded engine.

It shows the mechanism the project is built on (prefix-cache hits on prompts that share
an instruction) with real token counts and timings. A later version runs the same
workload as a DuckDB SQL query; ``run_demo`` is the piece to replace.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
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


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/llm-sql`` (``~/.cache/llm-sql`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "llm-sql"


def default_demo_model() -> Path:
    """A tiny random-weight Llama checkpoint, created once under the user cache dir."""
    path = cache_dir() / "models" / "tiny-llama"
    if (path / "config.json").is_file():
        return path
    from engine_backend.testing import make_tiny_model

    print(f"llm-sql: creating a tiny random-weight model in {path} (once)", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so an interrupted run never leaves half a model.
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-llama-", dir=path.parent))
    try:
        make_tiny_model(tmp, arch="llama")
        try:
            tmp.rename(path)
        except OSError:  # another process finished first
            if not (path / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def demo_requests() -> list:
    """Half constrained to the labels, half free text; every prompt starts with ``INSTRUCTION``."""
    from engine_backend.backends import GenerationRequest
    from engine_backend.sampling_params import SamplingParams

    half = len(REVIEWS) // 2
    labelled = SamplingParams(max_tokens=8, choices=LABELS)
    free = SamplingParams(max_tokens=8)
    return [GenerationRequest(f"{INSTRUCTION}\n\nReview: {review}\nSentiment:", labelled if i < half else free)
            for i, review in enumerate(REVIEWS)]


def _cell(text: str, width: int) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def print_table(requests: list, results: list, rows_per_kind: int = 6, out=sys.stdout) -> None:
    print(f"{'#':>3}  {'kind':<8}  {'review':<44}  {'answer':<26}  {'cached':>6}", file=out)
    half = len(requests) // 2
    shown = list(range(min(rows_per_kind, half))) + list(range(half, min(half + rows_per_kind, len(requests))))
    for i in shown:
        kind = "classify" if requests[i].params.choices else "free"
        review = REVIEWS[i] if i < len(REVIEWS) else str(requests[i].prompt)
        r = results[i]
        answer = repr(r.text) if r.error is None else f"error: {r.error}"
        print(f"{i:>3}  {kind:<8}  {_cell(review, 44):<44}  {_cell(answer, 26):<26}  {r.cached_prompt_tokens:>6}",
              file=out)
    if len(requests) > len(shown):
        print(f"     ... {len(requests) - len(shown)} more rows", file=out)


def run_demo(model: str, **engine_kwargs) -> int:
    from engine_backend.backends import make_backend

    print("llm-sql demo: a tiny random model answers nonsense; the point is the mechanism "
          "(prefix-cache hits, throughput), which is real.", file=sys.stderr)
    requests = demo_requests()
    with make_backend("embedded", model=model, **engine_kwargs) as backend:
        start = time.perf_counter()
        results = backend.generate(requests)
        seconds = time.perf_counter() - start
        stats = backend.stats()
    print_table(requests, results)
    prompt, cached, generated = stats["prompt_tokens"], stats["cached_prompt_tokens"], stats["generated_tokens"]
    print()
    print(f"requests            {len(requests)}  ({sum(r.error is not None for r in results)} errors)")
    print(f"prompt tokens       {prompt}")
    print(f"cached prompt tok.  {cached}")
    print(f"prefix hit rate     {cached / prompt if prompt else 0.0:.1%}")
    print(f"generated tokens    {generated}")
    print(f"seconds             {seconds:.2f}")
    print(f"tokens/s            {(prompt - cached + generated) / seconds if seconds else 0.0:.0f} computed, "
          f"{generated / seconds if seconds else 0.0:.0f} generated")
    return 0

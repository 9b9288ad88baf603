"""Train a tiny checkpoint on CPU so it answers LLM-SQL style prompts like a real (if small) model.

A random-weight checkpoint emits tokens nobody can predict, so speculative decoding on it measures nothing. This
module teaches a tiny model three instruction kinds over one table row, in a minute or two on two cores:

* ``extract``: copy a span of the prompt (the beer's name), then EOS;
* ``classify``: one of two labels that is a function of a field (``good`` when taste >= 7/10, else ``bad``);
* ``describe``: a longer answer, part template and part copy (``A {style} called {name}, rated {taste} ...``).

``task_prompt(task, row)`` is the exact prompt/answer format and ``rows_for(table, n, seed)`` the rows (a CSV file,
or a built-in synthetic beer-like generator), so a benchmark can ask the trained model what it was trained on.
That is ``train="copy"``. ``train="overall"`` is a second kind, for model cascades (``bench/cascade.py``): a noisy
classification asked exactly as the SQL function asks it (``overall_prompt``: ``llm_classify(taste, palate,
appearance, ['good', 'bad'])``, good when review/overall >= 15/20), trained on ``SharedPrefix`` batches (the
prompt's long constant head computed once per batch), with its held-out accuracy stored in the cache's train.json.

Training uses the engine's own model code (``load_model`` on the freshly written checkpoint) and rewrites only the
safetensors, with the same names, shapes, dtype and tying, so transformers still loads the result. Results are
cached by everything that determines them (see ``cache_key``) under ``LLM_SQL_TINY_CACHE`` (default
``~/.cache/llm-sql/tiny-models``); a repeated call copies the cached weights instead of training again.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

# Bump when the prompt format, data mix or training recipe changes: it is part of every cache key.
FORMAT_VERSION = 4
TASKS = ("extract", "classify", "describe")
TRAIN_KINDS = ("copy", "overall")

# The fields a prompt shows, in order. The label of ``classify`` depends on review/taste only.
PROMPT_FIELDS = ("beer/name", "beer/style", "review/taste")
INSTRUCTIONS = {
    "extract": "Extract the beer name.",
    "classify": "Is the beer good or bad?",
    "describe": "Describe the beer.",
}
# Share of each task in the training mix: copying long spans is the hardest part, so it gets the most.
TASK_WEIGHTS = {"extract": 0.4, "classify": 0.25, "describe": 0.35}


# ---------------------------------------------------------------------------------------------------------------
# Prompt format
# ---------------------------------------------------------------------------------------------------------------
def good_or_bad(row: dict[str, str]) -> str:
    """The ``classify`` label: ``good`` when review/taste (``"N/10"``) is at least 7, else ``bad``."""
    return "good" if int(row["review/taste"].split("/")[0]) >= 7 else "bad"


def task_prompt(task: str, row: dict[str, str], fields: tuple[str, ...] = PROMPT_FIELDS) -> tuple[str, str]:
    """(prompt, answer) for ``task`` on ``row`` (a dict of the table's fields as strings).

    The prompt lists ``fields`` (default ``PROMPT_FIELDS``) as ``key: value`` joined by ``"; "``, then a line
    with the instruction and a line ``"Answer:"``. The answer is the exact text the trained model generates
    before EOS. It starts with a space, as a model continues after a colon (llm-sql's own prompts end with a cue
    such as "Answer:"), which also makes a copied value the very tokens it is in the prompt (``"Iron"`` and
    ``" Iron"`` tokenize differently). Encode the prompt as the engine does (``tokenizer.encode(prompt)``,
    special tokens included).
    """
    if task not in INSTRUCTIONS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    listed = "; ".join(f"{k}: {row[k]}" for k in fields)
    prompt = f"{listed}\n{INSTRUCTIONS[task]}\nAnswer:"
    if task == "extract":
        answer = row["beer/name"]
    elif task == "classify":
        answer = good_or_bad(row)
    else:
        answer = f"A {row['beer/style']} called {row['beer/name']}, rated {row['review/taste']} for taste."
    return prompt, " " + answer


# ---------------------------------------------------------------------------------------------------------------
# The "overall" kind: llm_classify's own prompt, a noisy label
# ---------------------------------------------------------------------------------------------------------------
# The SQL call it answers is ``llm_classify(taste, palate, appearance, ['good', 'bad'])`` over a table whose columns
# taste, palate, appearance are the beer table's review/taste, review/palate, review/appearance as text ("7/10").
OVERALL_FIELDS = {"taste": "review/taste", "palate": "review/palate", "appearance": "review/appearance"}
OVERALL_LABELS = ("good", "bad")
# good when review/overall (out of 20) is at least this. On the shipped beer table (28,479 rows) that is 44.6% good
# (>= 14 would be 58.9%, >= 16 30.0%): the most balanced cut, and the one where reading all three fields is worth
# most over taste alone. The label is noisy given the fields: on the held-out reviews the best any classifier of
# (taste, palate, appearance) can do is 82.7% (each of the 190 distinct triples' majority label in the train split),
# taste alone 80.0%, palate alone 77.0%, always "bad" 55.1%. Size hardly matters for it: models from 4k to 2.6M
# parameters all reach ~82.6% within a few hundred steps (bench/cascade.py says how its small model is made weaker).
OVERALL_GOOD_FROM = 15


def overall_label(row: dict[str, str]) -> str:
    """The ``overall`` label: ``good`` when review/overall (``"N/20"``) is at least ``OVERALL_GOOD_FROM``."""
    return "good" if int(row["review/overall"].split("/")[0]) >= OVERALL_GOOD_FROM else "bad"


def overall_fields(row: dict[str, str]) -> dict[str, str]:
    """The SQL table's row for ``row``: {"taste": "7/10", "palate": "4/5", "appearance": "3/5"}."""
    return {name: row[col] for name, col in OVERALL_FIELDS.items()}


def overall_prompt(row: dict[str, str]) -> tuple[str, str]:
    """(prompt, answer): the prompt is byte for byte what ``udf.batch.evaluate`` sends for
    ``llm_classify(taste, palate, appearance, ['good', 'bad'])`` on this row with the default options (no
    ``system`` option, written field order), built with ``udf.prompts``' own functions; the answer is the choice
    the engine decodes for the label, ``" good"`` or ``" bad"``."""
    from udf.prompts import build_prompt, prompt_head, render_value

    fields = overall_fields(row)
    head = prompt_head("llm_classify", None, list(OVERALL_LABELS))
    prompt = build_prompt(head, "llm_classify", list(fields), [render_value(v) for v in fields.values()])
    return prompt, " " + overall_label(row)


def _synthetic_overall_row(rng: random.Random) -> dict[str, str]:
    """A synthetic row for ``overall`` (no table): one hidden quality drives taste, palate, appearance and
    overall, each with its own noise, so the label is a noisy function of all three fields as in the real table.
    Names are placeholders (the ``overall`` prompt has none)."""
    q = rng.gauss(0.0, 1.0)

    def score(mean: float, scale: float, noise: float, top: int) -> int:
        return max(1, min(top, round(mean + scale * q + rng.gauss(0.0, noise))))

    beer = rng.randint(1, 80000)
    return {"review/profileName": f"reviewer{rng.randint(0, 99999)}",
            "review/time": str(rng.randint(1_000_000_000, 1_330_000_000)),
            "review/overall": f"{score(14.0, 2.6, 1.8, 20)}/20", "review/taste": f"{score(6.8, 1.3, 0.8, 10)}/10",
            "review/palate": f"{score(3.4, 0.6, 0.5, 5)}/5", "review/appearance": f"{score(3.5, 0.5, 0.6, 5)}/5",
            "beer/name": f"Beer {beer}", "beer/style": rng.choice(_STYLES), "beer/beerId": str(beer)}


# ---------------------------------------------------------------------------------------------------------------
# Rows: a CSV table or a synthetic beer-like generator
# ---------------------------------------------------------------------------------------------------------------
_WORDS = ("Barley Island John Harvards Stone Anchor Rogue Dogfish Head Founders Bells Great Divide Victory Avery "
          "Lagunitas Deschutes Ommegang Brooklyn Sierra Nevada Three Floyds Allagash Left Hand Southern Tier Russian "
          "River Westmalle Chimay St. Bernardus Rochefort Unibroue Kona Flying Dog Count Hopula Blind Tiger Sheet "
          "Metal Blonde Grand Cru Fancy Lawnmower Simcoe Old Rasputin Black Butte Arrogant Bastard Midnight Sun Red "
          "Hook Winter Warmer Golden Monkey Hop Devil Storm King Imperial Dark Lord Oak Aged Yeti Pliny Elder "
          "Trappist Abbey Summer Harvest Moon Wild Goose Bitter Brew Double Triple Big Bear Fat Tire Stout Porter "
          "Wheat Pale Ale Lager Reserve Special Extra Jubilee Kriek Ruby Copper IPA Pumpkin Honey Light Cask Bottle "
          "Bock Pilsner Brown Amber Mountain Goat City Steam Iron Hill Street Legal The of de la Bio").split()
_STYLES = ["Belgian Strong Ale", "Abbey Dubbel", "Abbey Tripel", "Brown Ale", "Sweet Stout", "India Pale Ale (IPA)",
           "Barley Wine", "Porter", "Belgian Ale", "Amber Ale", "Imperial IPA", "Russian Imperial Stout",
           "American Pale Ale", "Hefeweizen", "Pilsener", "Saison", "Witbier", "Bock", "Doppelbock", "Kolsch",
           "Irish Dry Stout", "Scotch Ale", "Fruit Beer", "Oatmeal Stout", "Lambic", "Old Ale", "Dunkel",
           "Premium Lager", "Cream Ale", "Altbier"]
_STYLE_KINDS = ["Ale", "Lager", "Stout", "Porter", "Bock", "Wine", "IPA", "Beer", "Bitter"]
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_SYLLABLES = ["ba", "ro", "ki", "hop", "mal", "tu", "ne", "zor", "lup", "ve", "dra", "qui", "sto", "fen", "gar",
              "yl", "ox", "wim", "bel", "cha", "pri", "mo", "sa", "te", "er", "in", "an", "ch", "st", "ow"]


def _pseudo_word(rng: random.Random) -> str:
    """An unseen word (mostly capitalised), so that naming a beer can only be learnt as copying, not recalled."""
    r = rng.random()
    if r < 0.45:
        word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4)))
    elif r < 0.9:
        word = "".join(rng.choice(_LETTERS) for _ in range(rng.randint(2, 9)))
    else:
        return "".join(rng.choice(_LETTERS) for _ in range(rng.randint(2, 4))).upper()  # acronyms: RJ, RIPA
    return word.capitalize() if rng.random() < 0.9 else word


def _word(rng: random.Random) -> str:
    return rng.choice(_WORDS) if rng.random() < 0.35 else _pseudo_word(rng)


def _synthetic_name(rng: random.Random) -> str:
    """A beer-like name of 1-8 words (real ones have 2-7): known and unseen words, hyphens, a few extras."""
    words = [_word(rng) for _ in range(rng.choices(range(1, 9), weights=[2, 8, 16, 20, 14, 7, 3, 1])[0])]
    if rng.random() < 0.1:
        i = rng.randrange(len(words))
        words[i] = f"{words[i]}-{_word(rng)}"
    r = rng.random()
    if r < 0.08:  # (Cask), (all vintages to 1999)
        extra = [_word(rng) if rng.random() < 0.5 else _word(rng).lower() for _ in range(rng.randint(1, 4))]
        if rng.random() < 0.3:
            extra.append(str(rng.randint(1, 2012)))
        words.append(f"({' '.join(extra)})")
    elif r < 0.12:
        words.append(rng.choice(["No. {}", "#{}", "({})", "{}"]).format(rng.randint(1, 2012)))
    elif r < 0.14:
        words.insert(rng.randrange(len(words)), "&")
    return " ".join(words)


def _synthetic_style(rng: random.Random) -> str:
    """A known style, an unseen one, or two joined as real styles are ("Golden Ale/Blond Ale", "Sak - Ginjo")."""
    def one() -> str:
        if rng.random() < 0.5:
            return rng.choice(_STYLES)
        return " ".join([_word(rng) for _ in range(rng.randint(0, 2))] + [rng.choice(_STYLE_KINDS)])
    r = rng.random()
    if r < 0.15:
        return f"{one()}/{one()}"
    if r < 0.2:
        return f"{one()} - {_word(rng)}"
    return one()


def _synthetic_row(rng: random.Random) -> dict[str, str]:
    taste = rng.choices(range(1, 11), weights=[1, 2, 4, 6, 10, 14, 18, 14, 6, 3])[0]
    overall = max(1, min(20, 2 * taste + rng.randint(-3, 3)))
    return {
        "review/profileName": _pseudo_word(rng).lower() + str(rng.randint(0, 999)),
        "review/time": str(rng.randint(1_000_000_000, 1_330_000_000)),
        "review/overall": f"{overall}/20",
        "review/taste": f"{taste}/10",
        "review/palate": f"{rng.randint(1, 5)}/5",
        "review/appearance": f"{rng.randint(1, 5)}/5",
        "beer/name": _synthetic_name(rng),
        "beer/style": _synthetic_style(rng),
        "beer/beerId": str(rng.randint(1, 80000)),
    }


def _in_split(row: dict[str, str], split: str, kind: str = "copy") -> bool:
    """Held-out split by beer name (about 1 in 10 names), so a held-out row's name was never trained on. For the
    ``overall`` kind, whose prompt has no name, by review (reviewer, time, beer id: about 1 in 10 reviews), so the
    held-out rows are distributed as the table is (held-out names are a few beers with many reviews each)."""
    if split == "all":
        return True
    key = row["beer/name"] if kind != "overall" else \
        "\x1f".join(row[k] for k in ("review/profileName", "review/time", "beer/beerId"))
    held = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 10 == 0
    return held if split == "test" else not held


def _read_table(path: str | Path) -> list[dict[str, str]]:
    stat = os.stat(path)
    return _read_table_cached(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _read_table_cached(path: str, mtime_ns: int, size: int) -> list[dict[str, str]]:
    """The table's rows, read once per process (training draws from it in chunks)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [dict(r) for r in csv.DictReader(f)]


def split_rows(train_table: str | Path, split: str = "test", kind: str = "copy") -> list[dict[str, str]]:
    """Every row of the CSV ``train_table`` in ``split`` ("all", "train" or "test") as ``kind`` splits it, in file
    order, each once (``rows_for`` samples with replacement): a benchmark's held-out set."""
    if split not in ("all", "train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
    return [dict(r) for r in _read_table(train_table) if _in_split(r, split, kind)]


def rows_for(train_table: str | Path | None, n: int, seed: int = 0, split: str = "all",
             kind: str = "copy") -> Iterator[dict[str, str]]:
    """Yield ``n`` rows (dicts of strings): sampled from the CSV ``train_table`` (with replacement, seeded), or
    from the synthetic generator when it is None. ``split``: "all", "train" (names not held out) or "test" (the
    held-out ~10% of names, for measuring copying on names training never saw). Deterministic for a seed.
    ``kind`` picks the split (``_in_split``) and the synthetic generator: "copy" (the default) or "overall"
    (``_synthetic_overall_row``)."""
    if split not in ("all", "train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
    if kind not in TRAIN_KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(TRAIN_KINDS)}")
    rng = random.Random(seed)
    if train_table is not None:
        table = [r for r in _read_table(train_table) if _in_split(r, split, kind)]
        if not table:
            raise ValueError(f"{train_table} has no rows in split {split!r}")
        for _ in range(n):
            yield dict(table[rng.randrange(len(table))])  # a copy: the table is cached
        return
    synthetic = _synthetic_overall_row if kind == "overall" else _synthetic_row
    made = 0
    while made < n:
        row = synthetic(rng)
        if _in_split(row, split, kind):
            made += 1
            yield row


# ---------------------------------------------------------------------------------------------------------------
# Examples and batches
# ---------------------------------------------------------------------------------------------------------------
PROMPT_LOSS_WEIGHT = 0.1  # a little language modelling of the prompt helps the model read the fields
# Answer tokens weigh (ANSWER_TOKENS / n) ** ANSWER_NORM_POWER for an n-token answer (EOS included): per-token
# weights would drown the one-token classify label among forty-token descriptions.
ANSWER_TOKENS = 16
ANSWER_NORM_POWER = 0.5


def _answer_weight(n: int) -> float:
    """The loss weight of each token of an n-token answer (EOS included)."""
    return (ANSWER_TOKENS / n) ** ANSWER_NORM_POWER
TABLE_SHARE = 0.5  # with a train_table, the share of training rows drawn from it (the rest are synthetic)


def encode_example(tokenizer, task: str, row: dict[str, str],
                   fields: tuple[str, ...] = PROMPT_FIELDS) -> tuple[list[int], int]:
    """(token ids, prompt length) of ``task`` on ``row``: see ``_encode``."""
    return _encode(tokenizer, *task_prompt(task, row, fields))


def _encode(tokenizer, prompt: str, answer: str) -> tuple[list[int], int]:
    """(token ids, prompt length): the prompt as the engine encodes it, the answer, then the engine's EOS."""
    p = tokenizer.encode(prompt)
    return p + tokenizer.encode(answer, add_special_tokens=False) + [tokenizer.eos_token_ids[0]], len(p)


def _endless_rows(train_table, seed: int, kind: str = "copy") -> Iterator[dict[str, str]]:
    chunk = 0
    while True:
        yield from rows_for(train_table, 4096, seed=seed * 1000 + chunk, split="train", kind=kind)
        chunk += 1


def _copy_warmup_examples(tokenizer, seed: int) -> Iterator[tuple[list[int], int]]:
    """Endless ``extract`` examples on synthetic rows with only the name in the prompt.

    Copying is the one skill here that comes late and suddenly (an induction circuit): short prompts that leave
    nothing else to learn bring it on within a few hundred cheap steps, where the full mix often has not got it
    after a thousand.
    """
    for row in _endless_rows(None, seed + 1):
        yield encode_example(tokenizer, "extract", row, fields=("beer/name",))


def _examples(tokenizer, train_table, seed: int) -> Iterator[tuple[list[int], int]]:
    """Endless training examples: tasks drawn by ``TASK_WEIGHTS``; rows from the table's train split mixed with
    synthetic ones (``TABLE_SHARE`` of the table's), since a table's few hundred names could be memorised instead
    of copied."""
    rng = random.Random(seed)
    tasks, weights = list(TASK_WEIGHTS), list(TASK_WEIGHTS.values())
    synthetic = _endless_rows(None, seed)
    table = _endless_rows(train_table, seed) if train_table is not None else None
    while True:
        row = next(table) if table is not None and rng.random() < TABLE_SHARE else next(synthetic)
        yield encode_example(tokenizer, rng.choices(tasks, weights)[0], row)


def encode_overall(tokenizer, row: dict[str, str]) -> tuple[list[int], int]:
    """(token ids, prompt length) of the ``overall`` example for ``row``: ``overall_prompt`` encoded as the engine
    encodes it, the answer's tokens as the engine's choice constraint encodes them, then EOS."""
    return _encode(tokenizer, *overall_prompt(row))


def _overall_examples(tokenizer, train_table, seed: int) -> Iterator[tuple[list[int], int]]:
    """Endless ``overall`` examples from the table's train split (synthetic ``overall`` rows without a table).
    Few distinct (fields, label) pairs exist, so each is encoded once."""
    memo: dict[tuple[str, ...], tuple[list[int], int]] = {}
    for row in _endless_rows(train_table, seed, kind="overall"):
        key = (*overall_fields(row).values(), overall_label(row))
        ex = memo.get(key)
        if ex is None:
            ex = memo[key] = encode_overall(tokenizer, row)
        yield ex


AUTOCAST = True
ROW_TOKENS = 256  # packed row length: several examples share a row, so little compute goes to padding


class Packed:
    """Examples packed back to back into R rows of L tokens, flattened to [R*L] as the model takes them.

    ``ids``/``positions`` (each example starts at position 0), next-token ``targets`` and loss ``weights``,
    and ``seq`` [R, L]: which example of its row each token belongs to (-1: padding at a row's end).
    """

    def __init__(self, examples: list[tuple[list[int], int]], row_tokens: int | None = None) -> None:
        length = max(row_tokens or ROW_TOKENS, max(len(ids) for ids, _ in examples))
        rows: list[list[tuple[list[int], int]]] = []
        used: list[int] = []
        for ex in sorted(examples, key=lambda e: -len(e[0])):  # first fit, longest first
            r = next((i for i, u in enumerate(used) if u + len(ex[0]) <= length), None)
            if r is None:
                rows.append([])
                used.append(0)
                r = len(rows) - 1
            rows[r].append(ex)
            used[r] += len(ex[0])
        self.rows, self.length = len(rows), length
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        positions = torch.zeros(len(rows), length, dtype=torch.long)
        targets = torch.zeros(len(rows), length, dtype=torch.long)
        weights = torch.zeros(len(rows), length)
        self.seq = torch.full((len(rows), length), -1, dtype=torch.long)
        for r, row in enumerate(rows):
            start = 0
            for k, (seq, plen) in enumerate(row):
                n, end = len(seq), start + len(seq)
                ids[r, start:end] = torch.tensor(seq)
                positions[r, start:end] = torch.arange(n)
                targets[r, start:end - 1] = ids[r, start + 1:end]
                # Token i predicts token i+1: the answer is predicted from the last prompt token on.
                weights[r, start:start + plen - 1] = PROMPT_LOSS_WEIGHT
                weights[r, start + plen - 1:end - 1] = _answer_weight(n - plen)
                self.seq[r, start:end] = k
                start = end
        self.ids, self.positions = ids.flatten(), positions.flatten()
        self.targets, self.weights = targets.flatten(), weights.flatten()


class PackedAttention:
    """``DenseAttention``'s maths (float32 scores, softcap, sliding window, GQA) over ``Packed`` rows.

    ``DenseAttention(seq_lens=...)`` scores all N tokens against all N; scoring each row's L tokens only among
    themselves gives the same numbers at a fraction of the cost, which is what makes a minute of CPU enough.
    """

    def __init__(self, config, packed: Packed) -> None:
        self.config = config
        self.rows, self.length = packed.rows, packed.length
        seq, pos = packed.seq, packed.positions.view(packed.rows, -1)
        # Padding (-1) attends causally among itself, so no query row is all -inf; no real token sees it.
        self._same = (seq[:, :, None] == seq[:, None, :]) & (pos[:, :, None] >= pos[:, None, :])
        self._dist = pos[:, :, None] - pos[:, None, :]
        self._masks: dict[int | None, torch.Tensor] = {}

    def mask(self, window: int | None) -> torch.Tensor:
        if window not in self._masks:
            m = self._same if window is None else self._same & (self._dist < window)
            self._masks[window] = m[:, None]  # broadcast over heads
        return self._masks[window]

    def __call__(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                 softcap: float | None) -> torch.Tensor:
        n, heads, dim = q.shape
        group = heads // k.shape[1]
        r, t = self.rows, self.length
        qf = q.float().view(r, t, heads, dim).transpose(1, 2)
        kf = k.float().repeat_interleave(group, dim=1).view(r, t, heads, dim).transpose(1, 2)
        vf = v.float().repeat_interleave(group, dim=1).view(r, t, heads, dim).transpose(1, 2)
        out = _attend(qf, kf, vf, self.mask(self.config.window(layer_idx)), scale, softcap)
        return out.transpose(1, 2).reshape(n, heads, dim).to(q.dtype)


def _attend(q, k, v, keep, scale, softcap):
    """``DenseAttention``'s maths on float32 q/k/v [..., tokens, dim] (GQA already expanded): softcapped scores,
    ``keep`` (a bool mask broadcast over them) or -inf, softmax, the weighted values."""
    scores = q @ k.transpose(-1, -2) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    return torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1) @ v


class SharedPrefix:
    """Examples that begin with the same tokens (``overall``: llm_classify's prompt up to the first field value,
    about 100 of its 130 tokens) as one sequence: the shared prefix once, then each example's rest padded to the
    longest rest (``rest`` tokens), at the positions it has alone. Each rest attends to the prefix and causally to
    itself (``SharedPrefixAttention``): the same numbers as each example alone, the prefix computed once per batch
    instead of once per example.

    ``ids``/``positions``/``targets``/``weights`` as in ``Packed``, flat [shared + examples * rest] (the prefix's
    last token predicts nothing: each example continues differently; padding weighs 0).
    """

    def __init__(self, examples: list[tuple[list[int], int]]) -> None:
        first = examples[0][0]
        limit = min(plen for _, plen in examples) - 1  # every rest keeps at least its last prompt token
        shared = 0
        while shared < limit and all(ids[shared] == first[shared] for ids, _ in examples):
            shared += 1
        self.shared, self.examples = shared, len(examples)
        self.rest = rest = max(len(ids) for ids, _ in examples) - shared
        n = shared + len(examples) * rest
        ids, positions = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
        targets, weights = torch.zeros(n, dtype=torch.long), torch.zeros(n)
        if shared:
            ids[:shared] = torch.tensor(first[:shared])
            positions[:shared] = torch.arange(shared)
            targets[:shared - 1] = ids[1:shared]
            weights[:shared - 1] = PROMPT_LOSS_WEIGHT
        for k, (ex, plen) in enumerate(examples):
            m, at = len(ex), shared + k * rest
            ids[at:at + m - shared] = torch.tensor(ex[shared:])
            positions[at:at + rest] = torch.arange(shared, shared + rest)  # padding goes on counting
            targets[at:at + m - shared - 1] = ids[at + 1:at + m - shared]
            # token j predicts token j+1: prompt tokens up to plen-2, then the answer (EOS included)
            weights[at:at + plen - 1 - shared] = PROMPT_LOSS_WEIGHT
            weights[at + plen - 1 - shared:at + m - shared - 1] = _answer_weight(m - plen)
        self.ids, self.positions, self.targets, self.weights = ids, positions, targets, weights


class SharedPrefixAttention:
    """``DenseAttention``'s maths (float32 scores, softcap, sliding window, GQA) over a ``SharedPrefix``: the
    prefix attends causally to itself, each rest to the whole prefix and causally to itself. Scores are [rest,
    prefix + rest] per example, not [N, N] over the batch."""

    def __init__(self, config, packed: SharedPrefix) -> None:
        self.config = config
        self.shared, self.examples, self.rest = packed.shared, packed.examples, packed.rest
        pos = packed.positions[:self.shared + self.rest]  # the prefix, then the first rest: all rests alike
        self._dist_prefix = pos[:self.shared, None] - pos[None, :self.shared]
        self._dist_rest = pos[self.shared:, None] - pos[None, :]
        self._masks: dict[int | None, tuple[torch.Tensor, torch.Tensor]] = {}

    def masks(self, window: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        if window not in self._masks:
            self._masks[window] = tuple(d >= 0 if window is None else (d >= 0) & (d < window)
                                        for d in (self._dist_prefix, self._dist_rest))
        return self._masks[window]

    def __call__(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                 softcap: float | None) -> torch.Tensor:
        n, heads, dim = q.shape
        group = heads // k.shape[1]
        p, b, r = self.shared, self.examples, self.rest
        qf = q.float().transpose(0, 1)  # [heads, N, dim]
        kf = k.float().repeat_interleave(group, dim=1).transpose(0, 1)
        vf = v.float().repeat_interleave(group, dim=1).transpose(0, 1)
        keep_prefix, keep_rest = self.masks(self.config.window(layer_idx))
        outs = []
        if p:
            outs.append(_attend(qf[:, :p], kf[:, :p], vf[:, :p], keep_prefix, scale, softcap))
        # each example's rest: keys = the prefix (shared, broadcast) + its own rest
        qr = qf[:, p:].reshape(heads, b, r, dim).transpose(0, 1)  # [b, heads, r, dim]
        kr = torch.cat([kf[:, :p].unsqueeze(0).expand(b, -1, -1, -1),
                        kf[:, p:].reshape(heads, b, r, dim).transpose(0, 1)], dim=2)
        vr = torch.cat([vf[:, :p].unsqueeze(0).expand(b, -1, -1, -1),
                        vf[:, p:].reshape(heads, b, r, dim).transpose(0, 1)], dim=2)
        rest = _attend(qr, kr, vr, keep_rest, scale, softcap)  # [b, heads, r, dim]
        outs.append(rest.transpose(0, 1).reshape(heads, b * r, dim))
        return torch.cat(outs, dim=1).transpose(0, 1).to(q.dtype)


def _weighted_loss(model, packed, attention) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=AUTOCAST):
        hidden = model(packed.ids, packed.positions, attention)
        logits = model.compute_logits(hidden)
    losses = F.cross_entropy(logits.float(), packed.targets, reduction="none")
    return (losses * packed.weights).sum() / packed.weights.sum()


def batch_loss(model, examples: list[tuple[list[int], int]]) -> torch.Tensor:
    """Weighted next-token cross-entropy of ``model`` over ``examples`` packed into rows.

    Matmuls run in bfloat16 (autocast; weights, softmax and the loss stay float32): about 1.5x faster on CPU.
    """
    packed = Packed(examples)
    return _weighted_loss(model, packed, PackedAttention(model.config, packed))


def shared_prefix_loss(model, examples: list[tuple[list[int], int]]) -> torch.Tensor:
    """``batch_loss`` over ``SharedPrefix(examples)`` (the prefix's prompt loss counted once, not per example)."""
    packed = SharedPrefix(examples)
    return _weighted_loss(model, packed, SharedPrefixAttention(model.config, packed))


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------
BATCH = 24
LR = 3e-3
WARMUP = 0.06  # share of the steps spent warming the learning rate up
DECAY_FROM = 0.0  # share of the steps after which the learning rate decays
COPY_WARMUP = 0.3  # share of the steps spent on short copy-only examples first (see _copy_warmup_examples)
OVERALL_BATCH = 64  # train="overall": examples per step (cheap: they share a 100-token prefix)
OVERALL_LR = 3e-3


def _lr_at(step: int, steps: int, lr: float) -> float:
    """Linear warm-up, constant until ``DECAY_FROM`` of the steps, then cosine decay to a tenth of ``lr``."""
    warm = max(1, int(steps * WARMUP))
    if step < warm:
        return lr * (step + 1) / warm
    start = max(warm, int(steps * DECAY_FROM))
    if step < start:
        return lr
    frac = (step - start) / max(1, steps - start)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def _log(msg: str) -> None:
    print(f"[tiny_training] {msg}", file=sys.stderr, flush=True)


def train_model(model, tokenizer, steps: int, train_table=None, seed: int = 0, lr: float | None = None,
                batch: int | None = None, log_every_s: float = 5.0, on_step=None, train: str = "copy") -> list[float]:
    """Train ``model`` (an engine ``CausalLM`` in float32) in place for ``steps`` AdamW steps; returns the losses.

    ``train``: "copy" (the three tasks, after a copy warm-up; ``batch``/``lr`` default to ``BATCH``/``LR``) or
    "overall" (``overall_prompt`` examples only, ``SharedPrefix`` batches; ``OVERALL_BATCH``/``OVERALL_LR``).
    ``on_step(step, model)``, if given, runs after every step (the benchmark measures accuracy along the way).
    """
    if train not in TRAIN_KINDS:
        raise ValueError(f"unknown train {train!r}; choose from {', '.join(TRAIN_KINDS)}")
    overall = train == "overall"
    lr = (OVERALL_LR if overall else LR) if lr is None else lr
    batch = (OVERALL_BATCH if overall else BATCH) if batch is None else batch
    torch.manual_seed(seed)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-8)
    if overall:
        warmup, examples = iter(()), _overall_examples(tokenizer, train_table, seed)
        warmup_steps = 0
    else:
        warmup, examples = _copy_warmup_examples(tokenizer, seed), _examples(tokenizer, train_table, seed)
        warmup_steps = int(steps * COPY_WARMUP)
    losses: list[float] = []
    t0 = last = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr)
        if step < warmup_steps:  # shorter examples, so a third more per step cost about a full batch
            loss = batch_loss(model, [next(warmup) for _ in range(batch * 4 // 3)])
        elif overall:
            loss = shared_prefix_loss(model, [next(examples) for _ in range(batch)])
        else:
            loss = batch_loss(model, [next(examples) for _ in range(batch)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step + 1, model)
        now = time.perf_counter()
        if now - last >= log_every_s or step == steps - 1:
            recent = losses[-20:]
            _log(f"step {step + 1}/{steps} loss {sum(recent) / len(recent):.3f} ({now - t0:.0f}s)")
            last = now
    model.eval()
    return losses


# ---------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def greedy_answer(model, tokenizer, prompt: str, max_tokens: int = 80) -> tuple[str, bool]:
    """(text, stopped at EOS) of greedy decoding with the engine's model and ``DenseAttention``, no KV cache.

    Independent of the serving engine, so quality can be measured while the engine itself changes.
    """
    from .models import DenseAttention

    ids = tokenizer.encode(prompt)
    out: list[int] = []
    eos = set(tokenizer.eos_token_ids)
    for _ in range(max_tokens):
        x = torch.tensor(ids + out)
        hidden = model(x, torch.arange(len(x)), DenseAttention(model.config))
        token = int(model.compute_logits(hidden[-1:]).argmax(-1))
        if token in eos:
            return tokenizer.decode(out), True
        out.append(token)
    return tokenizer.decode(out), False


def accuracy(model, tokenizer, rows: list[dict[str, str]], task: str) -> tuple[float, list[tuple[str, str]]]:
    """Share of ``rows`` whose greedy answer to ``task`` is exactly the expected answer followed by EOS, and up to
    three (got, expected) misses."""
    hits, misses = 0, []
    for row in rows:
        prompt, answer = task_prompt(task, row)
        got, stopped = greedy_answer(model, tokenizer, prompt, max_tokens=len(answer) + 8)
        if stopped and got == answer:
            hits += 1
        elif len(misses) < 3:
            misses.append((got, answer))
    return hits / max(1, len(rows)), misses


@torch.no_grad()
def choice_answer(model, tokenizer, prompt: str, choices: list[str]) -> str:
    """The choice greedy decoding picks under the engine's choice constraint (``ChoiceTrie``): at each step the
    most likely token the trie allows (no model call where it allows one token only), until a choice is complete."""
    from .constraints import ChoiceTrie
    from .models import DenseAttention

    trie = ChoiceTrie(choices, tokenizer)
    by_tokens = {tuple(tokenizer.encode(c, add_special_tokens=False)): c for c in choices}
    ids, out, node = tokenizer.encode(prompt), [], trie.start()
    while True:
        allowed = trie.allowed(node)
        if len(allowed) > 1:
            x = torch.tensor(ids + out)
            logits = model.compute_logits(model(x, torch.arange(len(x)), DenseAttention(model.config))[-1:])[0]
            trie.mask_row(logits, node)
            token = int(logits.argmax())
        else:
            token = allowed[0]
        node, complete = trie.step(node, token)
        if token not in trie.eos_ids:
            out.append(token)
        if complete:
            return by_tokens[tuple(out)]


def overall_accuracy(model, tokenizer, rows: list[dict[str, str]]) -> dict[str, float]:
    """Greedy constrained answers of ``model`` to ``overall_prompt`` on ``rows`` against their labels: accuracy,
    rows, and the share answered "good" (each distinct prompt is asked once)."""
    choices = [" " + lbl for lbl in OVERALL_LABELS]
    answers: dict[str, str] = {}
    hits = good = 0
    for row in rows:
        prompt, answer = overall_prompt(row)
        if prompt not in answers:
            answers[prompt] = choice_answer(model, tokenizer, prompt, choices)
        hits += answers[prompt] == answer
        good += answers[prompt] == " good"
    n = max(1, len(rows))
    return {"accuracy": hits / n, "rows": len(rows), "answered_good": good / n}


def overall_heldout_rows(train_table) -> list[dict[str, str]]:
    """The rows ``train_checkpoint`` measures an ``overall`` model on: the table's whole test split, or 2,000
    synthetic held-out rows."""
    if train_table is not None:
        return split_rows(train_table, "test", kind="overall")
    return list(rows_for(None, 2000, seed=12345, split="test", kind="overall"))


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints: train what make_tiny_model wrote, through a cache
# ---------------------------------------------------------------------------------------------------------------
TRAIN_INIT_STD = 0.02  # make_tiny_model's 0.2 keeps random outputs varied but trains far slower
DEFAULT_STEPS = 800
SHALLOW_STEPS = 1200  # two layers are just enough for copying, and form it later; their steps are cheap
OVERALL_STEPS = 300  # train="overall", any size


def default_steps(path: str | Path, train: str = "copy") -> int:
    """Training steps when none are asked for. ``copy``: ``SHALLOW_STEPS`` for models of at most two layers (the
    drafts), else ``DEFAULT_STEPS``: about 90 s for the benchmark's 0.7M-parameter target on two cores, 60 s for
    its 0.14M-parameter, two-layer draft. ``overall``: ``OVERALL_STEPS``."""
    if train == "overall":
        return OVERALL_STEPS
    layers = json.loads((Path(path) / "config.json").read_text())["num_hidden_layers"]
    return SHALLOW_STEPS if layers <= 2 else DEFAULT_STEPS
_WEIGHT_FILES = ("*.safetensors", "model.safetensors.index.json")


def cache_root() -> Path:
    """``LLM_SQL_TINY_CACHE`` or ``~/.cache/llm-sql/tiny-models``."""
    return Path(os.environ.get("LLM_SQL_TINY_CACHE") or Path.home() / ".cache" / "llm-sql" / "tiny-models")


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(path: Path, train: str, train_table, steps: int, seed: int, shards: int) -> str:
    """Hash of everything a trained checkpoint depends on: the checkpoint's config, tokenizer and generation files
    (arch, overrides, vocabulary, EOS), the seed, the training kind and steps, the table's bytes, the weight file
    layout and ``FORMAT_VERSION``. The random weights are not part of it: training starts from its own init."""
    parts = {name: _file_digest(path / name) for name in
             ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json")
             if (path / name).is_file()}
    parts.update(format=FORMAT_VERSION, train=train, steps=steps, seed=seed, shards=shards,
                 table=None if train_table is None else _file_digest(Path(train_table)))
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def _weight_files(folder: Path) -> list[Path]:
    return sorted(p for pattern in _WEIGHT_FILES for p in folder.glob(pattern))


def _copy_weights(src: Path, dst: Path) -> None:
    for stale in _weight_files(dst):
        stale.unlink()
    for f in _weight_files(src):
        shutil.copyfile(f, dst / f.name)


def _fresh_init(model, seed: int) -> None:
    """Load ``random_state_dict`` at ``TRAIN_INIT_STD`` into ``model`` (names as in the checkpoint)."""
    from .testing import random_state_dict

    state = random_state_dict(model.config, seed=seed, std=TRAIN_INIT_STD)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(state[name])


def train_checkpoint(path: str | Path, train: str = "copy", train_table: str | Path | None = None,
                     train_steps: int | None = None, seed: int = 0, shards: int = 1) -> Path:
    """Train the checkpoint in ``path`` (as ``make_tiny_model`` wrote it) and rewrite its safetensors in place.

    Only the weight files change: same tensor names, shapes and dtype, a tied LM head still left out. A result
    cached under ``cache_root()`` for the same ``cache_key`` is copied instead of training again.
    """
    from .loader import load_model
    from .testing import _write_weights
    from .tokenizer import Tokenizer

    if train not in TRAIN_KINDS:
        raise ValueError(f"unknown train {train!r}; choose from {', '.join(TRAIN_KINDS)}")
    path = Path(path)
    steps = default_steps(path, train) if train_steps is None else int(train_steps)
    if steps < 1:
        raise ValueError(f"train_steps must be at least 1, got {steps}")
    cached = cache_root() / cache_key(path, train, train_table, steps, seed, shards)
    if (cached / "train.json").is_file():
        _copy_weights(cached, path)
        return path

    dtype = json.loads((path / "config.json").read_text()).get("dtype", "float32")
    model = load_model(path, dtype="float32")  # train in float32 whatever the stored dtype
    _fresh_init(model, seed)
    tokenizer = Tokenizer.from_dir(path)
    _log(f"training {path.name} ({sum(p.numel() for p in model.parameters()):,} parameters) for {steps} steps")
    t0 = time.perf_counter()
    losses = train_model(model, tokenizer, steps, train_table, seed=seed, train=train)
    seconds = time.perf_counter() - t0
    heldout = None
    if train == "overall":  # measured on the float32 weights, before they are stored in ``dtype``
        model.eval()
        t1 = time.perf_counter()
        heldout = overall_accuracy(model, tokenizer, overall_heldout_rows(train_table))
        heldout["seconds"] = round(time.perf_counter() - t1, 1)
        _log(f"held-out accuracy {heldout['accuracy']:.3f} on {heldout['rows']} rows")
    tensors = {n: p.detach().to(getattr(torch, dtype)).contiguous() for n, p in model.named_parameters()}
    _write_weights(path, tensors, shards)

    # Publish to the cache atomically: a half-written entry must never be found.
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.parent / f".{cached.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _copy_weights(path, tmp)
    summary = dict(steps=steps, seconds=round(seconds, 1), first_loss=losses[0] if losses else None,
                   final_loss=sum(losses[-20:]) / max(1, len(losses[-20:])), format=FORMAT_VERSION)
    if heldout is not None:
        summary["heldout"] = heldout
    (tmp / "train.json").write_text(json.dumps(summary, indent=2))
    try:
        os.replace(tmp, cached)
    except OSError:  # another process published the same key first: theirs is as good
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def train_summary(path: str | Path, train: str = "copy", train_table=None, train_steps: int | None = None,
                  seed: int = 0, shards: int = 1) -> dict[str, Any] | None:
    """The cached ``train.json`` (steps, seconds, first/final loss; for ``overall`` also ``heldout``: accuracy,
    rows and share answered good on ``overall_heldout_rows``) of a trained checkpoint, if there is one."""
    steps = default_steps(path, train) if train_steps is None else int(train_steps)
    f = cache_root() / cache_key(Path(path), train, train_table, steps, seed, shards) / "train.json"
    return json.loads(f.read_text()) if f.is_file() else None

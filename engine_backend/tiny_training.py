"""Train a tiny checkpoint on CPU so it answers LLM-SQL style prompts like a real (if small) model.

A random-weight checkpoint emits tokens nobody can predict, so speculative decoding on it measures nothing. This
module teaches a tiny model three instruction kinds over one table row, in a minute or two on two cores:

* ``extract``: copy a span of the prompt (the beer's name), then EOS;
* ``classify``: one of two labels that is a function of a field (``good`` when taste >= 7/10, else ``bad``);
* ``describe``: a longer answer, part template and part copy (``A {style} called {name}, rated {taste} ...``).

``task_prompt(task, row)`` is the exact prompt/answer format and ``rows_for(table, n, seed)`` the rows (a CSV file,
or a built-in synthetic beer-like generator), so a benchmark can ask the trained model what it was trained on.

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
TRAIN_KINDS = ("copy",)

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


def _in_split(row: dict[str, str], split: str) -> bool:
    """Held-out split by beer name (about 1 in 10 names), so a held-out row's name was never trained on."""
    if split == "all":
        return True
    held = int(hashlib.sha256(row["beer/name"].encode()).hexdigest()[:8], 16) % 10 == 0
    return held if split == "test" else not held


def _read_table(path: str | Path) -> list[dict[str, str]]:
    stat = os.stat(path)
    return _read_table_cached(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _read_table_cached(path: str, mtime_ns: int, size: int) -> list[dict[str, str]]:
    """The table's rows, read once per process (training draws from it in chunks)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [dict(r) for r in csv.DictReader(f)]


def rows_for(train_table: str | Path | None, n: int, seed: int = 0, split: str = "all") -> Iterator[dict[str, str]]:
    """Yield ``n`` rows (dicts of strings): sampled from the CSV ``train_table`` (with replacement, seeded), or
    from the synthetic generator when it is None. ``split``: "all", "train" (names not held out) or "test" (the
    held-out ~10% of names, for measuring copying on names training never saw). Deterministic for a seed."""
    if split not in ("all", "train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
    rng = random.Random(seed)
    if train_table is not None:
        table = [r for r in _read_table(train_table) if _in_split(r, split)]
        if not table:
            raise ValueError(f"{train_table} has no rows in split {split!r}")
        for _ in range(n):
            yield dict(table[rng.randrange(len(table))])  # a copy: the table is cached
        return
    made = 0
    while made < n:
        row = _synthetic_row(rng)
        if _in_split(row, split):
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
TABLE_SHARE = 0.5  # with a train_table, the share of training rows drawn from it (the rest are synthetic)


def encode_example(tokenizer, task: str, row: dict[str, str],
                   fields: tuple[str, ...] = PROMPT_FIELDS) -> tuple[list[int], int]:
    """(token ids, prompt length): the prompt as the engine encodes it, the answer, then the engine's EOS."""
    prompt, answer = task_prompt(task, row, fields)
    p = tokenizer.encode(prompt)
    return p + tokenizer.encode(answer, add_special_tokens=False) + [tokenizer.eos_token_ids[0]], len(p)


def _endless_rows(train_table, seed: int) -> Iterator[dict[str, str]]:
    chunk = 0
    while True:
        yield from rows_for(train_table, 4096, seed=seed * 1000 + chunk, split="train")
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
                weights[r, start + plen - 1:end - 1] = (ANSWER_TOKENS / (n - plen)) ** ANSWER_NORM_POWER
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
        scores = qf @ kf.transpose(-1, -2) * scale
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        scores = scores.masked_fill(~self.mask(self.config.window(layer_idx)), float("-inf"))
        out = torch.softmax(scores, dim=-1) @ vf
        return out.transpose(1, 2).reshape(n, heads, dim).to(q.dtype)


def batch_loss(model, examples: list[tuple[list[int], int]]) -> torch.Tensor:
    """Weighted next-token cross-entropy of ``model`` over ``examples`` packed into rows.

    Matmuls run in bfloat16 (autocast; weights, softmax and the loss stay float32): about 1.5x faster on CPU.
    """
    packed = Packed(examples)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=AUTOCAST):
        hidden = model(packed.ids, packed.positions, PackedAttention(model.config, packed))
        logits = model.compute_logits(hidden)
    losses = F.cross_entropy(logits.float(), packed.targets, reduction="none")
    return (losses * packed.weights).sum() / packed.weights.sum()


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------
BATCH = 24
LR = 3e-3
WARMUP = 0.06  # share of the steps spent warming the learning rate up
DECAY_FROM = 0.0  # share of the steps after which the learning rate decays
COPY_WARMUP = 0.3  # share of the steps spent on short copy-only examples first (see _copy_warmup_examples)


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


def train_model(model, tokenizer, steps: int, train_table=None, seed: int = 0, lr: float = LR,
                batch: int = BATCH, log_every_s: float = 5.0, on_step=None) -> list[float]:
    """Train ``model`` (an engine ``CausalLM`` in float32) in place for ``steps`` AdamW steps; returns the losses.

    ``on_step(step, model)``, if given, runs after every step (the benchmark measures accuracy along the way).
    """
    torch.manual_seed(seed)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-8)
    warmup, examples = _copy_warmup_examples(tokenizer, seed), _examples(tokenizer, train_table, seed)
    warmup_steps = int(steps * COPY_WARMUP)
    losses: list[float] = []
    t0 = last = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr)
        if step < warmup_steps:  # shorter examples, so a third more per step cost about a full batch
            loss = batch_loss(model, [next(warmup) for _ in range(batch * 4 // 3)])
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


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints: train what make_tiny_model wrote, through a cache
# ---------------------------------------------------------------------------------------------------------------
TRAIN_INIT_STD = 0.02  # make_tiny_model's 0.2 keeps random outputs varied but trains far slower
DEFAULT_STEPS = 800
SHALLOW_STEPS = 1200  # two layers are just enough for copying, and form it later; their steps are cheap


def default_steps(path: str | Path) -> int:
    """Training steps when none are asked for: ``SHALLOW_STEPS`` for models of at most two layers (the drafts),
    else ``DEFAULT_STEPS``: about 90 s for the benchmark's 0.7M-parameter target on two cores, 60 s for its
    0.14M-parameter, two-layer draft."""
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
    steps = default_steps(path) if train_steps is None else int(train_steps)
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
    losses = train_model(model, tokenizer, steps, train_table, seed=seed)
    seconds = time.perf_counter() - t0
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
    (tmp / "train.json").write_text(json.dumps(summary, indent=2))
    try:
        os.replace(tmp, cached)
    except OSError:  # another process published the same key first: theirs is as good
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def train_summary(path: str | Path, train: str = "copy", train_table=None, train_steps: int | None = None,
                  seed: int = 0, shards: int = 1) -> dict[str, Any] | None:
    """The cached ``train.json`` (steps, seconds, first/final loss) of a trained checkpoint, if there is one."""
    steps = default_steps(path) if train_steps is None else int(train_steps)
    f = cache_root() / cache_key(Path(path), train, train_table, steps, seed, shards) / "train.json"
    return json.loads(f.read_text()) if f.is_file() else None

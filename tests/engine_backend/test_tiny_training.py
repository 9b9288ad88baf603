"""Trained tiny checkpoints (engine_backend.tiny_training): prompt format, rows, packing, training, loading, cache."""
from __future__ import annotations

import json
import os
import time

import pytest
import torch

from engine_backend import tiny_training as tt
from engine_backend.loader import load_model
from engine_backend.models import DenseAttention
from engine_backend.testing import make_tiny_model
from engine_backend.tokenizer import Tokenizer

ROW = {"review/profileName": "hopdog", "review/time": "1157587200", "review/overall": "13/20",
       "review/taste": "8/10", "review/palate": "3/5", "review/appearance": "4/5",
       "beer/name": "Barley Island Count Hopula", "beer/style": "Imperial IPA", "beer/beerId": "63836"}
FIELDS = "beer/name: Barley Island Count Hopula; beer/style: Imperial IPA; review/taste: 8/10"
STEPS = 40


@pytest.fixture()
def tiny_cache(tmp_path, monkeypatch):
    """A private training cache, so tests neither see nor fill the user's."""
    root = tmp_path / "tiny-cache"
    monkeypatch.setenv("LLM_SQL_TINY_CACHE", str(root))
    return root


# ---- prompt format and rows ----------------------------------------------------------------------------------
def test_task_prompt_format_is_stable():
    assert tt.task_prompt("extract", ROW) == (f"{FIELDS}\nExtract the beer name.\nAnswer:",
                                              " Barley Island Count Hopula")
    assert tt.task_prompt("classify", ROW) == (f"{FIELDS}\nIs the beer good or bad?\nAnswer:", " good")
    assert tt.task_prompt("classify", {**ROW, "review/taste": "6/10"})[1] == " bad"
    assert tt.task_prompt("describe", ROW) == (
        f"{FIELDS}\nDescribe the beer.\nAnswer:",
        " A Imperial IPA called Barley Island Count Hopula, rated 8/10 for taste.")
    with pytest.raises(ValueError, match="unknown task"):
        tt.task_prompt("summarise", ROW)


def test_synthetic_rows_are_deterministic_and_split_by_name():
    a, b = list(tt.rows_for(None, 50, seed=3)), list(tt.rows_for(None, 50, seed=3))
    assert a == b and a != list(tt.rows_for(None, 50, seed=4))
    assert set(a[0]) == set(ROW) and all(isinstance(v, str) for r in a for v in r.values())
    assert all(tt.good_or_bad(r) in ("good", "bad") for r in a)
    train = {r["beer/name"] for r in tt.rows_for(None, 300, seed=0, split="train")}
    test = {r["beer/name"] for r in tt.rows_for(None, 60, seed=0, split="test")}
    assert len(test) > 50 and not train & test


def test_rows_from_csv_are_strings_sampled_with_a_seed(tmp_path):
    table = tmp_path / "beer.csv"
    header = list(ROW)
    lines = [",".join(header)] + [",".join({**ROW, "beer/name": f"Beer {i}", "review/taste": f"{i % 10 + 1}/10"}[h]
                                           for h in header) for i in range(30)]
    table.write_text("\n".join(lines) + "\n")
    rows = list(tt.rows_for(table, 20, seed=1))
    assert rows == list(tt.rows_for(str(table), 20, seed=1))
    assert all(r["beer/name"].startswith("Beer ") and r["beer/beerId"] == "63836" for r in rows)
    held = list(tt.rows_for(table, 5, seed=1, split="test"))
    assert all(r["beer/name"] not in {t["beer/name"] for t in tt.rows_for(table, 200, seed=2, split="train")}
               for r in held)


# ---- packing: the training attention is DenseAttention's maths ------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gemma2"])  # gemma2: softcaps and a sliding window shorter than a row
def test_packed_attention_matches_dense(tiny_model_dir, arch):
    path = tiny_model_dir(arch)
    model, tok = load_model(path, dtype="float32"), Tokenizer.from_dir(path)
    examples = [tt.encode_example(tok, tt.TASKS[i % 3], r) for i, r in enumerate(tt.rows_for(None, 7, seed=0))]
    packed = tt.Packed(examples, row_tokens=200)
    assert packed.rows < len(examples)  # several examples share a row
    with torch.no_grad():
        hidden = model(packed.ids, packed.positions, tt.PackedAttention(model.config, packed))
        hidden = hidden.view(packed.rows, packed.length, -1)
        for r in range(packed.rows):
            for k in range(int(packed.seq[r].max()) + 1):
                where = (packed.seq[r] == k).nonzero().flatten()
                ids = packed.ids.view(packed.rows, -1)[r, where]
                ref = model(ids, torch.arange(len(ids)), DenseAttention(model.config))
                torch.testing.assert_close(hidden[r, where], ref, rtol=0, atol=1e-5)


# ---- training, loading, cache ---------------------------------------------------------------------------------
def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma2"])
def test_trained_checkpoint_loads_in_engine_and_transformers(tmp_path, tiny_cache, arch):
    transformers = pytest.importorskip("transformers")
    from engine_backend import LLMEngine, SamplingParams

    rand = make_tiny_model(tmp_path / "random", arch)
    path = make_tiny_model(tmp_path / "trained", arch, train="copy", train_steps=STEPS)
    before, after = _tensors(rand), _tensors(path)
    assert {k: v.shape for k, v in after.items()} == {k: v.shape for k, v in before.items()}
    assert all(v.dtype == torch.float32 for v in after.values())
    assert not torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
    if arch != "llama":  # tied embeddings: still no lm_head tensor
        assert "lm_head.weight" not in after

    summary = tt.train_summary(path, train_steps=STEPS)
    assert summary["steps"] == STEPS and summary["final_loss"] < 0.85 * summary["first_loss"]

    prompt = tt.task_prompt("extract", next(tt.rows_for(None, 1, seed=5)))[0]
    engine = LLMEngine(str(path))
    ours = engine.generate(prompt, SamplingParams(max_tokens=8))[0]
    assert ours.finish_reason in ("stop", "length") and ours.error is None
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    ids = engine.tokenizer.encode(prompt)
    with torch.no_grad():
        ref = hf.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, pad_token_id=0,
                          attention_mask=torch.ones(1, len(ids), dtype=torch.long))[0, len(ids):].tolist()
    eos = set(engine.tokenizer.eos_token_ids)
    assert [t for t in ours.token_ids if t not in eos] == [t for t in ref if t not in eos][:len(ours.token_ids)]


def test_second_call_is_cached_and_byte_identical(tmp_path, tiny_cache):
    first = make_tiny_model(tmp_path / "a", "llama", train="copy", train_steps=STEPS)
    entries = list(tiny_cache.iterdir())
    assert len(entries) == 1 and json.loads((entries[0] / "train.json").read_text())["steps"] == STEPS
    t0 = time.perf_counter()
    second = make_tiny_model(tmp_path / "b", "llama", train="copy", train_steps=STEPS)
    assert time.perf_counter() - t0 < 1.0
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    # Anything that changes the result is a different entry.
    make_tiny_model(tmp_path / "c", "llama", train="copy", train_steps=STEPS, seed=1)
    assert len(list(tiny_cache.iterdir())) == 2


def test_bad_train_arguments_are_refused(tmp_path, tiny_cache):
    with pytest.raises(ValueError, match="unknown train"):
        make_tiny_model(tmp_path, "llama", train="chat")
    with pytest.raises(ValueError, match="at least 1"):
        make_tiny_model(tmp_path, "llama", train="copy", train_steps=0)


def test_default_steps_follow_depth(tiny_model_dir):
    assert tt.default_steps(tiny_model_dir("llama")) == tt.DEFAULT_STEPS
    assert tt.default_steps(tiny_model_dir("llama", num_hidden_layers=2)) == tt.SHALLOW_STEPS > tt.DEFAULT_STEPS


# ---- quality (minutes): LLMSQL_SLOW=1 ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("LLMSQL_SLOW"), reason="full training takes minutes; set LLMSQL_SLOW=1")
def test_full_training_answers_held_out_rows(tmp_path):
    path = make_tiny_model(tmp_path, "llama", train="copy", hidden_size=128, num_hidden_layers=4,
                           intermediate_size=256, num_attention_heads=4)
    model, tok = load_model(path), Tokenizer.from_dir(path)
    rows = list(tt.rows_for(None, 40, seed=12345, split="test"))
    assert tt.accuracy(model, tok, rows, "extract")[0] >= 0.8
    assert tt.accuracy(model, tok, rows, "classify")[0] >= 0.85

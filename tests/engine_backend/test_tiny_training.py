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


# ---- train="overall": llm_classify's own prompt, a noisy label (bench/cascade.py) --------------------------------
BEER = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "llmsql", "beer.csv")


def test_overall_prompt_is_byte_for_byte_what_llm_classify_sends():
    """The SQL call through llm_sql (a recording backend in place of a model) sends exactly ``overall_prompt``,
    constrained to the choices the answers are trained as, and the trained answer parses to the label."""
    duckdb = pytest.importorskip("duckdb")
    pa = pytest.importorskip("pyarrow")
    import llm_sql
    from engine_backend.backends.base import Backend, GenerationResult

    rows = list(tt.rows_for(None, 40, seed=7, kind="overall"))
    rows[0].update({"review/taste": "10/10", "review/palate": "5/5", "review/appearance": "1/5"})
    expected = {tt.overall_prompt(r)[0]: tt.overall_prompt(r)[1] for r in rows}

    class Recorder(Backend):
        name = "recorder"
        seen: list = []

        def generate(self, requests, progress=False):
            self.seen.extend(requests)
            return [GenerationResult(text=expected[r.prompt], token_ids=[], finish_reason="stop", error=None,
                                     prompt_tokens=0, cached_prompt_tokens=0, completion_tokens=1)
                    for r in requests]

    con = duckdb.connect()
    fields = [tt.overall_fields(r) for r in rows]
    con.register("src", pa.table({"id": list(range(len(rows))),
                                  **{k: [f[k] for f in fields] for k in ("taste", "palate", "appearance")}}))
    con.execute("CREATE TABLE beers AS SELECT * FROM src")
    rec = Recorder()
    db = llm_sql.register(con, backend=rec, cache=False, progress=False)
    got = db.sql("SELECT id, llm_classify(taste, palate, appearance, ['good', 'bad']) FROM beers ORDER BY id")
    # (rows with the same fields are one prompt: the label is noisy, so the recorder answers one of theirs)
    assert [v for _, v in got.fetchall()] == [expected[tt.overall_prompt(r)[0]].strip() for r in rows]
    assert {r.prompt for r in rec.seen} == set(expected)  # every prompt sent is a trained one, and all were sent
    assert all(r.params.choices == [" " + lbl for lbl in tt.OVERALL_LABELS] for r in rec.seen)
    assert set(expected.values()) <= {" good", " bad"}


def test_overall_examples_encode_as_the_engine_does(tiny_model_dir):
    tok = Tokenizer.from_dir(tiny_model_dir("llama"))
    row = next(tt.rows_for(None, 1, seed=3, kind="overall"))
    prompt, answer = tt.overall_prompt(row)
    ids, plen = tt.encode_overall(tok, row)
    assert ids[:plen] == tok.encode(prompt)
    assert ids[plen:] == tok.encode(answer, add_special_tokens=False) + [tok.eos_token_ids[0]]


@pytest.mark.skipif(not os.path.isfile(BEER), reason="needs ../shared/data/llmsql/beer.csv")
def test_overall_labels_are_balanced_and_split_by_review():
    train, test = tt.split_rows(BEER, "train", "overall"), tt.split_rows(BEER, "test", "overall")
    assert len(test) > 2000 and len(train) > 9 * len(test) - 2000
    key = lambda r: (r["review/profileName"], r["review/time"], r["beer/beerId"])  # noqa: E731
    assert not {key(r) for r in train} & {key(r) for r in test}
    for rows in (train, test):
        assert 0.4 < sum(tt.overall_label(r) == "good" for r in rows) / len(rows) < 0.5


def test_overall_synthetic_labels_are_balanced():
    rows = list(tt.rows_for(None, 2000, seed=0, split="train", kind="overall"))
    assert 0.35 < sum(tt.overall_label(r) == "good" for r in rows) / len(rows) < 0.6
    assert {tt.overall_label(r) for r in rows} == {"good", "bad"}


@pytest.mark.parametrize("arch", ["llama", "gemma2"])  # gemma2: softcaps and a sliding window
def test_shared_prefix_attention_matches_dense(tiny_model_dir, arch):
    path = tiny_model_dir(arch)
    model, tok = load_model(path, dtype="float32"), Tokenizer.from_dir(path)
    examples = [tt.encode_overall(tok, r) for r in tt.rows_for(None, 5, seed=1, kind="overall")]
    packed = tt.SharedPrefix(examples)
    assert packed.shared > 80 and len(packed.ids) < sum(len(ids) for ids, _ in examples) / 2
    with torch.no_grad():
        hidden = model(packed.ids, packed.positions, tt.SharedPrefixAttention(model.config, packed))
        for k, (ids, _) in enumerate(examples):
            at = packed.shared + k * packed.rest
            mine = torch.cat([hidden[:packed.shared], hidden[at:at + len(ids) - packed.shared]])
            ref = model(torch.tensor(ids), torch.arange(len(ids)), DenseAttention(model.config))
            torch.testing.assert_close(mine, ref, rtol=0, atol=1e-5)


def test_overall_training_runs_and_reports_held_out_accuracy(tmp_path, tiny_cache):
    path = make_tiny_model(tmp_path, "llama", train="overall", train_steps=3, hidden_size=32, num_hidden_layers=1,
                           intermediate_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    summary = tt.train_summary(path, "overall", train_steps=3)
    assert summary["steps"] == 3 and 0.0 <= summary["heldout"]["accuracy"] <= 1.0
    assert summary["heldout"]["rows"] == 2000
    assert tt.default_steps(path, "overall") == tt.OVERALL_STEPS
    assert tt.train_summary(path, "copy", train_steps=3) is None  # the kind is part of the cache key


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_choice_answer_is_the_engines_constrained_greedy_answer(tiny_model_dir, arch):
    """The held-out accuracy asks ``choice_answer``; it must pick what the engine decodes under ``choices`` (on
    these prompts the two random models pick all four between them, " yes" ended by EOS included)."""
    from engine_backend import LLMEngine, SamplingParams

    path = tiny_model_dir(arch)
    model, tok = load_model(path, dtype="float32"), Tokenizer.from_dir(path)
    choices = [" yes", " no", " yes please", " not sure"]  # " yes" ends a choice that " yes please" goes on from
    prompts = ["The beer was", "Is the review positive? Answer:", "Sentiment:", "Label: positive. Label:",
               "Score the review from 1 to 5. Score:", "Question: Is the beer too sweet? Answer:",
               "The hotel room was clean and", "Crisp and clean. Crisp and"]
    engine = LLMEngine(str(path))
    expected = [o.text for o in engine.generate(prompts, SamplingParams(choices=choices, max_tokens=8))]
    assert [tt.choice_answer(model, tok, p, choices) for p in prompts] == expected

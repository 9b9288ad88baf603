"""Model layer: our models, loader and tokenizer agree with transformers on tiny random checkpoints."""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from engine_backend.config import FULL, SLIDING, ModelConfig
from engine_backend.loader import CheckpointError, load_model
from engine_backend.models import DenseAttention, build_model
from engine_backend.testing import HF_ARCHS, make_tiny_model
from engine_backend.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

LONG_TEXT = (
    "The beer pours a hazy golden color with a huge white head. Aroma of mango, pineapple and pine. "
    "The taste is bitter but balanced, medium body, dry finish. Would I buy it again? Yes, absolutely!"
)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64, "rope_theta": 500000.0}


def hf_model(path):
    # eager: the reference implementation (Gemma 2 softcapping has no sdpa path anyway).
    return transformers.AutoModelForCausalLM.from_pretrained(
        path, attn_implementation="eager", dtype=torch.float32).eval()


def our_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        x = torch.tensor(ids)
        return model.compute_logits(model(x, torch.arange(len(ids)), DenseAttention(model.config)))


def assert_logits_match(path, ids: list[int]) -> torch.Tensor:
    ours = our_logits(load_model(path), ids)
    with torch.no_grad():
        ref = hf_model(path)(torch.tensor([ids])).logits[0].float()
    assert ours.shape == ref.shape and ours.dtype == torch.float32
    scale = ref.abs().max().item()
    assert (ours - ref).abs().max().item() <= 1e-4 * max(1.0, scale)
    return ref


# ---- logits against transformers ---------------------------------------------------------------------------------
CASES = [(arch, {}) for arch in HF_ARCHS] + [
    ("llama", {"rope_scaling": LLAMA3_ROPE}),
    ("gemma2", {"attn_logit_softcapping": 5.0, "final_logit_softcapping": 3.0}),  # caps that really bend
    ("gemma3_text", {"rope_scaling": {"rope_type": "linear", "factor": 4.0}}),  # scaling on full layers only
    ("qwen2", {"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 2}),
    ("qwen3", {"tie_word_embeddings": False, "attention_bias": True}),
]


@pytest.mark.parametrize("arch,overrides", CASES, ids=[f"{a}-{'-'.join(o) or 'default'}" for a, o in CASES])
def test_logits_match_transformers(tiny_model_dir, arch, overrides):
    path = tiny_model_dir(arch, **overrides)
    config = ModelConfig.from_dir(path)
    ids = Tokenizer.from_dir(path).encode(LONG_TEXT)
    if config.sliding_window:
        assert len(ids) > 2 * config.sliding_window  # the window really cuts
    assert_logits_match(path, ids)


def test_llama3_rope_scaling_changes_the_model(tiny_model_dir):
    scaled = load_model(tiny_model_dir("llama", rope_scaling=LLAMA3_ROPE))
    assert scaled.config.rope_full.rope_type == "llama3"
    plain = load_model(tiny_model_dir("llama", rope_theta=500000.0))
    ids = list(range(5, 85))
    assert (our_logits(scaled, ids) - our_logits(plain, ids)).abs().max() > 1e-2


def test_layer_types_agree_with_transformers(tiny_model_dir):
    for arch in HF_ARCHS:
        path = tiny_model_dir(arch)
        hf_cfg = transformers.AutoConfig.from_pretrained(path)
        ours = ModelConfig.from_dir(path)
        expected = getattr(hf_cfg, "layer_types", None) or (
            [SLIDING if getattr(hf_cfg, "sliding_window", None) else FULL] * hf_cfg.num_hidden_layers)
        assert list(ours.layer_types) == list(expected), arch
        assert ours.sliding_window == (getattr(hf_cfg, "sliding_window", None) if SLIDING in expected else None), arch


# ---- tokenizer -----------------------------------------------------------------------------------------------------
TEXTS = [LONG_TEXT, "Hello world!\n\n  It's\tfine  ", "Ünïcödé 🍺 naïve café", "<s> </s> <bos><eos> <|im_end|>", ""]
CHAT = [{"role": "system", "content": "Answer yes or no."},
        {"role": "user", "content": " Is this review positive? Great beer. "},
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "And this one? Flat and stale."}]


@pytest.mark.parametrize("arch", HF_ARCHS)
def test_tokenizer_matches_transformers(tiny_model_dir, arch):
    path = tiny_model_dir(arch)
    ours, hf = Tokenizer.from_dir(path), transformers.AutoTokenizer.from_pretrained(path)
    for text in TEXTS:
        for special in (True, False):
            assert ours.encode(text, add_special_tokens=special) == hf.encode(text, add_special_tokens=special)
        ids = ours.encode(text)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    assert ours.decode(ours.encode(TEXTS[1])) == TEXTS[1]  # byte-level BPE round-trips
    if hf.bos_token_id is not None:
        assert ours.encode("hi")[0] == hf.bos_token_id == ours.bos_token_id
    for gen_prompt in (True, False):
        assert ours.apply_chat_template(CHAT, add_generation_prompt=gen_prompt) == hf.apply_chat_template(
            CHAT, tokenize=False, add_generation_prompt=gen_prompt)
    hf_ids = hf.apply_chat_template(CHAT, tokenize=True, add_generation_prompt=True)
    hf_ids = hf_ids if isinstance(hf_ids, list) else hf_ids["input_ids"]
    assert ours.encode_chat(CHAT) == hf_ids
    assert hf.eos_token_id in ours.eos_token_ids
    gen_eos = json.loads((path / "generation_config.json").read_text())["eos_token_id"]
    assert set([gen_eos] if isinstance(gen_eos, int) else gen_eos) <= set(ours.eos_token_ids)
    assert ours.vocab_size == len(hf) <= ModelConfig.from_dir(path).vocab_size


def test_tokenizer_helpers(tiny_model_dir):
    tok = Tokenizer.from_dir(tiny_model_dir("gemma2"))
    ids = tok.encode("Great beer, 5 stars 🍺", add_special_tokens=False)
    assert b"".join(tok.decode_token_bytes(i) for i in ids).decode() == "Great beer, 5 stars 🍺"
    assert tok.decode_token_bytes(tok.eos_token_id) == b""
    assert tok.token_to_id("<end_of_turn>") in tok.eos_token_ids
    with pytest.raises(Exception, match="Unknown role"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])


# ---- loading ---------------------------------------------------------------------------------------------------------
def test_sharded_checkpoint_loads_identically(tiny_model_dir):
    single = load_model(tiny_model_dir("qwen2"))
    sharded_path = tiny_model_dir("qwen2", shards=3)
    assert len(list(sharded_path.glob("*.safetensors"))) == 3
    assert (sharded_path / "model.safetensors.index.json").is_file()
    sharded = load_model(sharded_path)
    a, b = single.state_dict(), sharded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    hf = hf_model(sharded_path)
    assert torch.equal(hf.model.embed_tokens.weight, sharded.model.embed_tokens.weight)


def test_same_seed_same_weights_and_tied_embeddings(tiny_model_dir, tmp_path):
    a = load_model(tiny_model_dir("qwen3"))
    b = load_model(make_tiny_model(tmp_path / "again", "qwen3"))
    c = load_model(make_tiny_model(tmp_path / "other", "qwen3", seed=1))
    assert torch.equal(a.model.layers[0].mlp.up_proj.weight, b.model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(a.model.layers[0].mlp.up_proj.weight, c.model.layers[0].mlp.up_proj.weight)
    assert a.lm_head.weight is a.model.embed_tokens.weight


def test_flattened_sequences_match_separate_runs(tiny_model_dir):
    """Several sequences in one forward (positions restart per sequence) give each one's own logits."""
    model = load_model(tiny_model_dir("gemma2"))
    seqs = [list(range(3, 50)), list(range(100, 110)), list(range(200, 241))]
    flat = torch.tensor([t for s in seqs for t in s])
    positions = torch.cat([torch.arange(len(s)) for s in seqs])
    with torch.no_grad():
        joint = model.compute_logits(model(flat, positions, DenseAttention(model.config, [len(s) for s in seqs])))
    for s, part in zip(seqs, torch.split(joint, [len(s) for s in seqs])):
        torch.testing.assert_close(part, our_logits(model, s), atol=1e-4, rtol=1e-4)


def test_multimodal_gemma3_checkpoint_loads_its_text_model(tiny_model_dir, tmp_path):
    """A "gemma3" (image+text) checkpoint: config nested in text_config, weights under model.language_model."""
    from safetensors.torch import load_file, save_file

    src = tiny_model_dir("gemma3_text")
    dst = tmp_path / "mm"
    shutil.copytree(src, dst)
    text_cfg = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": text_cfg,
                                                "eos_token_id": [1, 5]}))
    tensors = {k.replace("model.", "model.language_model.", 1): v
               for k, v in load_file(src / "model.safetensors").items()}
    tensors["model.vision_tower.patch.weight"] = torch.zeros(2, 2)
    save_file(tensors, dst / "model.safetensors")
    ids = list(range(3, 70))
    torch.testing.assert_close(our_logits(load_model(dst), ids), our_logits(load_model(src), ids))


def test_bfloat16_loading(tiny_model_dir):
    path = tiny_model_dir("gemma3_text")
    model = load_model(path, dtype="bfloat16")
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    ids = Tokenizer.from_dir(path).encode(LONG_TEXT)
    logits = our_logits(model, ids)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    ref = our_logits(load_model(path), ids)
    assert (logits - ref).abs().max() < 0.1 * ref.abs().max()
    # "auto" follows the checkpoint: a bf16-stored checkpoint loads as bf16, an fp32 one as fp32.
    assert load_model(path, dtype="auto").lm_head.weight.dtype == torch.float32
    bf16_path = tiny_model_dir("llama", dtype="bfloat16")
    assert load_model(bf16_path, dtype="auto").lm_head.weight.dtype == torch.bfloat16
    assert load_model(bf16_path).lm_head.weight.dtype == torch.float32  # CPU default


def test_bench_sized_config(tmp_path):
    path = make_tiny_model(tmp_path / "bench", "llama", hidden_size=512, num_hidden_layers=8,
                           intermediate_size=1536, num_attention_heads=8, num_key_value_heads=4)
    config = ModelConfig.from_dir(path)
    assert (config.head_dim(0), config.num_kv_heads(0), config.num_layers) == (64, 4, 8)
    n_params = sum(p.numel() for p in load_model(path).parameters())
    assert 20e6 < n_params < 60e6


# ---- malformed checkpoints ----------------------------------------------------------------------------------------
def _broken_copy(tiny_model_dir, tmp_path, arch="llama", **overrides):
    dst = tmp_path / "broken"
    shutil.copytree(tiny_model_dir(arch, **overrides), dst)
    return dst


def test_missing_directory_and_config(tmp_path, tiny_model_dir):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope")
    path = _broken_copy(tiny_model_dir, tmp_path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(path)
    (path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(path)


def test_unsupported_model_type(tmp_path, tiny_model_dir):
    path = _broken_copy(tiny_model_dir, tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match=r"config.json.*'gpt2'.*llama.*qwen3.*gemma2"):
        load_model(path)


def test_missing_or_bad_weights(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file, save_file

    path = _broken_copy(tiny_model_dir, tmp_path)
    weights = path / "model.safetensors"
    tensors = load_file(weights)
    save_file({k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"}, weights)
    with pytest.raises(CheckpointError, match=r"model.safetensors.*model\.layers\.1\.mlp\.up_proj\.weight"):
        load_model(path)
    save_file({**tensors, "model.layers.0.self_attn.o_proj.bias": torch.ones(64)}, weights)
    with pytest.raises(CheckpointError, match=r"unexpected tensor model\.layers\.0\.self_attn\.o_proj\.bias"):
        load_model(path)
    save_file({**tensors, "model.norm.weight": torch.ones(3)}, weights)
    with pytest.raises(CheckpointError, match=r"model.safetensors.*model\.norm\.weight.*shape"):
        load_model(path)
    weights.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(path)
    weights.unlink()
    with pytest.raises(CheckpointError, match=r"\.safetensors"):
        load_model(path)


def test_missing_shard_and_tokenizer(tmp_path, tiny_model_dir):
    path = _broken_copy(tiny_model_dir, tmp_path, shards=2)
    (path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        load_model(path)
    path2 = tmp_path / "notok"
    shutil.copytree(tiny_model_dir("llama"), path2)
    (path2 / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        load_model(path2)
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        Tokenizer.from_dir(path2)


# ---- llmsql_hetero: sliding layers with their own head_dim / kv heads -------------------------------------------
class RecordingAttention(DenseAttention):
    def __init__(self, config):
        super().__init__(config)
        self.shapes = {}

    def __call__(self, layer_idx, q, k, v, scale, softcap):
        self.shapes[layer_idx] = (tuple(q.shape), tuple(k.shape), tuple(v.shape), scale)
        return super().__call__(layer_idx, q, k, v, scale, softcap)


def test_hetero_geometry_and_forward(tiny_model_dir):
    path = tiny_model_dir("llmsql_hetero")
    model = load_model(path)
    cfg = model.config
    assert cfg.layer_types == (SLIDING, FULL, SLIDING, FULL) and cfg.window(0) == 32 and cfg.window(1) is None
    assert (cfg.head_dim(0), cfg.num_kv_heads(0)) == (24, 1)
    assert (cfg.head_dim(1), cfg.num_kv_heads(1)) == (16, 2)
    n = 70
    attn = RecordingAttention(cfg)
    with torch.no_grad():
        hidden = model(torch.arange(5, 5 + n), torch.arange(n), attn)
    assert hidden.shape == (n, cfg.hidden_size)
    assert attn.shapes[0][:2] == ((n, 4, 24), (n, 1, 24)) and attn.shapes[0][3] == pytest.approx(24 ** -0.5)
    assert attn.shapes[1][:2] == ((n, 4, 16), (n, 2, 16))
    # Causality: the logits of a prefix do not depend on what follows it.
    ids = Tokenizer.from_dir(path).encode(LONG_TEXT)
    torch.testing.assert_close(our_logits(model, ids)[:40], our_logits(model, ids[:40]), atol=1e-5, rtol=1e-5)


def test_hetero_sliding_window_bounds_the_receptive_field(tiny_model_dir):
    """All-sliding stack of L layers with window W: token 0 reaches positions < 1 + L*(W-1), no further."""
    path = tiny_model_dir("llmsql_hetero", layer_types=[SLIDING] * 4, sliding_window=6)
    model = load_model(path)
    ids = list(range(10, 40))
    changed = [99] + ids[1:]
    diff = (our_logits(model, ids) - our_logits(model, changed)).abs().amax(-1)
    reach = 1 + 4 * (6 - 1)
    assert (diff[:reach] > 1e-4).all() and (diff[reach:] < 1e-6).all()


# ---- config parsing edge cases -------------------------------------------------------------------------------------
def test_config_variants():
    base = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=128, vocab_size=100)
    mistral = ModelConfig.from_hf_dict({**base, "model_type": "mistral", "sliding_window": None})
    assert mistral.layer_types == (FULL,) * 4 and mistral.window(0) is None
    assert ModelConfig.from_hf_dict({**base, "model_type": "mistral", "sliding_window": 8}).window(3) == 8
    # Old-style rope fields.
    old = ModelConfig.from_hf_dict({**base, "model_type": "llama", "rope_theta": 5e5, "rope_scaling": {
        "type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}})
    assert old.rope_full.theta == 5e5 and old.rope_full.rope_type == "llama3"
    # Gemma 3 wrapped in a multimodal config, old-style local rope and pattern.
    text = {**base, "num_hidden_layers": 12, "head_dim": 16, "rope_theta": 1e6, "rope_local_base_freq": 1e4,
            "sliding_window_pattern": 6, "sliding_window": 512}
    g3 = ModelConfig.from_hf_dict({"model_type": "gemma3", "text_config": text, "eos_token_id": [1, 106]})
    assert g3.arch == "gemma3_text" and g3.eos_token_ids == (1, 106)
    assert [i for i, t in enumerate(g3.layer_types) if t == FULL] == [5, 11]
    assert g3.rope(0).theta == 1e4 and g3.rope(5).theta == 1e6
    assert g3.attn_scale(0) == 256 ** -0.5 and g3.attn_softcap is None
    g2 = ModelConfig.from_hf_dict({**base, "model_type": "gemma2"})
    assert g2.layer_types == (SLIDING, FULL, SLIDING, FULL) and g2.attn_softcap == 50.0
    assert g2.final_logit_softcapping == 30.0 and g2.head_dim(0) == 256
    with pytest.raises(ValueError, match="unsupported model_type"):
        ModelConfig.from_hf_dict({**base, "model_type": "bert"})
    with pytest.raises(ValueError, match="rope_type"):
        ModelConfig.from_hf_dict({**base, "model_type": "llama", "rope_parameters": {"rope_type": "mrope"}})
    assert dataclasses.replace(g2, sliding_window=4).window(0) == 4  # frozen but replaceable
    assert build_model(g2).lm_head.weight is not None

"""Reasoning models: each family's thinking switch renders as transformers renders the same template, the thinking
budget is never exceeded, the answer is what the model writes after the block (greedy tokens equal transformers'
with the engine's close at the budget), and constraints bind only the answer."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers

from engine_backend import LLMEngine, SamplingParams
from engine_backend.reasoning import reasoning_format
from engine_backend.tokenizer import Tokenizer

MESSAGES = [{"role": "system", "content": "You grade beers."}, {"role": "user", "content": "Is a flat stout good?"}]
PROMPTS = ["Is the beer good? Taste: 8/10.", "Summarise: crisp, clean and bitter.", "Rate this ale: skunky."]

# A DeepSeek-R1 style template (opens the block in the generation prompt) and a gpt-oss style one (channels and
# reasoning_effort), written for these tests in the families' shapes.
R1_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '<|User|>' + m['content'] }}"
               "{% elif m['role'] == 'assistant' %}{{ '<|Assistant|>' + m['content'] + eos_token }}"
               "{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
               "{% if add_generation_prompt %}{{ '<|Assistant|><think>\\n' }}{% endif %}")
HARMONY_TEMPLATE = ("{{ '<|start|>system<|message|>Reasoning: ' + (reasoning_effort | default('medium')) + '<|end|>' }}"
                    "{% for m in messages %}{{ '<|start|>' + m['role'] + '<|message|>' + m['content'] + '<|end|>' }}"
                    "{% endfor %}{% if add_generation_prompt %}{{ '<|start|>assistant<|channel|>' }}{% endif %}")


@pytest.fixture(scope="module")
def qwen3_dir(tiny_model_dir):
    return str(tiny_model_dir("qwen3"))


@pytest.fixture(scope="module")
def engine(qwen3_dir):
    return LLMEngine(qwen3_dir)


def with_template(src, dst, template):
    shutil.copytree(src, dst)
    cfg_path = dst / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = template
    cfg_path.write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("thinking", [True, False])
def test_qwen3_switch_renders_as_transformers(qwen3_dir, thinking):
    ours = Tokenizer.from_dir(qwen3_dir)
    fmt = reasoning_format(ours)
    assert fmt.family == "qwen3"
    hf = transformers.AutoTokenizer.from_pretrained(qwen3_dir)
    expected = hf.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True, enable_thinking=thinking)
    assert fmt.render(ours, MESSAGES, thinking) == expected
    assert ("<think>\n\n</think>" in expected) is not thinking  # the template's own switch did it


def test_think_and_harmony_families_render_as_transformers(tiny_model_dir, tmp_path):
    base = tiny_model_dir("llama")
    r1 = with_template(base, tmp_path / "r1", R1_TEMPLATE)
    ours, hf = Tokenizer.from_dir(r1), transformers.AutoTokenizer.from_pretrained(str(r1))
    fmt = reasoning_format(ours)
    assert fmt.family == "think"
    rendered = hf.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert fmt.render(ours, MESSAGES, True) == rendered
    assert fmt.render(ours, MESSAGES, False) == rendered + "\n</think>\n\n"  # an empty block: answer at once
    harmony = with_template(base, tmp_path / "harmony", HARMONY_TEMPLATE)
    ours, hf = Tokenizer.from_dir(harmony), transformers.AutoTokenizer.from_pretrained(str(harmony))
    fmt = reasoning_format(ours)
    assert fmt.family == "harmony"
    for thinking, effort in ((True, "high"), (False, "low")):
        assert fmt.render(ours, MESSAGES, thinking) == hf.apply_chat_template(
            MESSAGES, tokenize=False, add_generation_prompt=True, reasoning_effort=effort)


def test_a_model_without_reasoning_mode_says_so(tiny_model_dir):
    engine = LLMEngine(str(tiny_model_dir("llama")))
    assert reasoning_format(engine.tokenizer) is None
    with pytest.raises(ValueError, match="no reasoning mode"):
        engine.add_request("hi", SamplingParams(reasoning=True))
    assert not engine.has_unfinished_requests()


@pytest.mark.parametrize("budget", [0, 1, 4, 25])
def test_budget_is_never_exceeded_and_constraints_bind_the_answer(engine, budget):
    outs = engine.generate(PROMPTS, SamplingParams(reasoning=True, max_reasoning_tokens=budget,
                                                   choices=[" good", " bad"]))
    close = engine.tokenizer.encode("</think>", add_special_tokens=False)
    for out in outs:
        assert out.num_reasoning_tokens <= budget
        assert out.text in (" good", " bad") and out.finish_reason == "stop"
        assert "</think>" not in out.text and "</think>" not in out.reasoning
        if out.num_reasoning_tokens == budget and budget:  # closed by the engine at the budget
            assert out.token_ids[budget:budget + len(close)] == close
        answer = engine.tokenizer.encode(out.text, add_special_tokens=False)
        assert out.token_ids[len(out.token_ids) - len(answer):] == answer == out.answer_logprobs()[0]


def hf_reasoning_greedy(hf, prompt_ids, budget, close_ids, end_id, max_answer):
    """transformers greedy decoding with the engine's rule: close the block after ``budget`` tokens."""
    ids, thought = list(prompt_ids), 0
    with torch.no_grad():
        while thought < budget:
            token = int(hf(torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(token)
            thought += 1
            if token == end_id:
                break
        else:
            ids += close_ids
        for _ in range(max_answer):
            ids.append(int(hf(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt_ids):]


@pytest.mark.parametrize("budget", [3, 12])
def test_greedy_tokens_equal_transformers_with_the_close(qwen3_dir, engine, budget):
    hf = transformers.AutoModelForCausalLM.from_pretrained(qwen3_dir, dtype=torch.float32).eval()
    params = SamplingParams(reasoning=True, max_reasoning_tokens=budget, max_tokens=6, ignore_eos=True)
    tok = engine.tokenizer
    close = tok.encode("</think>", add_special_tokens=False)
    for out in engine.generate(PROMPTS, params):
        expected = hf_reasoning_greedy(hf, out.prompt_token_ids, budget, close, tok.token_to_id("</think>"), 6)
        assert out.token_ids == expected
        assert len(out.token_ids) - out.num_reasoning_tokens - len(close) == 6  # max_tokens counts the answer only


def test_reasoning_prompt_is_the_templates_thinking_render(engine):
    out, = engine.generate(PROMPTS[:1], SamplingParams(reasoning=True, max_reasoning_tokens=2, max_tokens=2))
    fmt = reasoning_format(engine.tokenizer)
    text = fmt.render(engine.tokenizer, [{"role": "user", "content": PROMPTS[0]}], thinking=True)
    assert out.prompt_token_ids == engine.tokenizer.encode(text, add_special_tokens=False)
    plain, = engine.generate(PROMPTS[:1], SamplingParams(max_tokens=2))
    assert plain.reasoning is None and plain.num_reasoning_tokens == 0
    assert plain.prompt_token_ids == engine.tokenizer.encode(PROMPTS[0])  # off: the prompt as given


def test_server_returns_reasoning_apart_streamed_or_not(qwen3_dir, tiny_model_dir):
    openai = pytest.importorskip("openai")
    from engine_backend.async_engine import AsyncLLMEngine
    from engine_backend.server import ServerThread, create_app

    with AsyncLLMEngine(LLMEngine(qwen3_dir)) as aengine, \
            ServerThread(create_app(aengine, "k", aengine.model_name)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="k", max_retries=0)
        kwargs = dict(model=aengine.model_name, messages=MESSAGES, max_tokens=6,
                      extra_body={"max_reasoning_tokens": 10})
        message = client.chat.completions.create(**kwargs).choices[0].message
        reasoning = message.model_extra["reasoning_content"]
        assert reasoning and "<think>" not in reasoning
        thought, answer = "", ""
        for chunk in client.chat.completions.create(**kwargs, stream=True):
            for c in chunk.choices:
                thought += (c.delta.model_extra or {}).get("reasoning_content") or ""
                answer += c.delta.content or ""
        assert (thought, answer) == (reasoning, message.content)
        # logprobs cover the answer only, streamed or not
        lp = dict(kwargs, logprobs=True)
        whole = client.chat.completions.create(**lp).choices[0].logprobs.content
        streamed = [e for chunk in client.chat.completions.create(**lp, stream=True)
                    for c in chunk.choices if c.logprobs for e in c.logprobs.content]
        assert [e.token for e in streamed] == [e.token for e in whole] and 0 < len(whole) <= 6
        off = client.chat.completions.create(model=aengine.model_name, messages=MESSAGES, max_tokens=4,
                                             extra_body={"chat_template_kwargs": {"enable_thinking": False}})
        assert "reasoning_content" not in off.choices[0].message.model_extra
    with AsyncLLMEngine(LLMEngine(str(tiny_model_dir("llama")))) as aengine, \
            ServerThread(create_app(aengine, "k", aengine.model_name)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="no reasoning mode"):
            client.chat.completions.create(model=aengine.model_name, messages=MESSAGES, max_tokens=4,
                                           extra_body={"chat_template_kwargs": {"enable_thinking": True}})

"""The official ``openai`` client against the real server: streaming, n, logprobs, penalties, usage, structured
outputs and the 400s, as a user's code would call them. Greedy answers are compared with a reference engine on
the same checkpoint, logprobs with transformers."""
from __future__ import annotations

import json
import time

import httpx
import pytest
import torch

openai = pytest.importorskip("openai")
transformers = pytest.importorskip("transformers")

from engine_backend import LLMEngine, SamplingParams  # noqa: E402
from engine_backend.server import MAX_N  # noqa: E402

KEY = "client-test-key"
PREFIX = "Classify the sentiment of this beer review as positive or negative.\nReview: "
PROMPTS = [PREFIX + r + "\nSentiment:" for r in ("Crisp and clean.", "Tasted like cardboard.", "Juicy citrus hops.")]
MESSAGES = [{"role": "system", "content": "You label beer reviews."}, {"role": "user", "content": "Flat and sweet."}]


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def model(aengine):
    return aengine.model_name


@pytest.fixture(scope="module")
def reference(model_dir):
    return LLMEngine(model=model_dir)


def streamed_text(chunks, n=1, chat=False):
    texts, finish, usage = [""] * n, [None] * n, None
    for chunk in chunks:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            texts[c.index] += (c.delta.content or "") if chat else c.text
            finish[c.index] = c.finish_reason or finish[c.index]
    return texts, finish, usage


# --- streaming ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stop", [None, [" the", "\n"], ["e"]])
def test_stream_concatenates_to_the_plain_answer(client, model, stop):
    kwargs = dict(model=model, prompt=PROMPTS, max_tokens=24, stop=stop)
    plain = client.completions.create(**kwargs)
    texts, finish, usage = streamed_text(client.completions.create(**kwargs, stream=True,
                                                                    stream_options={"include_usage": True}), n=3)
    assert texts == [c.text for c in sorted(plain.choices, key=lambda c: c.index)]
    assert finish == [c.finish_reason for c in sorted(plain.choices, key=lambda c: c.index)]
    assert usage.completion_tokens == plain.usage.completion_tokens
    assert usage.prompt_tokens == plain.usage.prompt_tokens


def test_stream_holds_back_a_stop_string_split_over_tokens(client, model, reference):
    """A stop string made of two generated tokens: the first token's text may be its start, so it must not be
    sent until the next token shows whether the stop string follows."""
    ref, = reference.generate([PROMPTS[0]], SamplingParams(max_tokens=30, ignore_eos=True))
    pieces = [reference.tokenizer.decode([t]) for t in ref.token_ids]
    i = next(i for i in range(3, 29) if pieces[i].isascii() and pieces[i + 1].isascii()
             and pieces[i].strip() and pieces[i + 1].strip())
    stop = pieces[i] + pieces[i + 1]
    kwargs = dict(model=model, prompt=PROMPTS[0], max_tokens=30, stop=[stop], extra_body={"ignore_eos": True})
    plain = client.completions.create(**kwargs).choices[0].text
    assert stop not in plain and len(plain) < len(ref.text)
    texts, finish, _ = streamed_text(client.completions.create(**kwargs, stream=True))
    assert texts == [plain] and finish == ["stop"]


def test_stream_arrives_in_pieces(client, model, reference):
    chunks = list(client.completions.create(model=model, prompt=PROMPTS[0], max_tokens=30, stream=True,
                                            extra_body={"ignore_eos": True}))
    assert sum(1 for c in chunks if c.choices and c.choices[0].text) >= 5  # token deltas, not one blob
    assert all(c.usage is None for c in chunks)  # no usage unless asked for
    ref, = reference.generate([PROMPTS[0]], SamplingParams(max_tokens=30, ignore_eos=True))
    assert "".join(c.choices[0].text for c in chunks) == ref.text


def test_chat_stream(client, model):
    plain = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=20)
    chunks = list(client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=20, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    texts, finish, _ = streamed_text(chunks, chat=True)
    assert texts == [plain.choices[0].message.content] and finish == [plain.choices[0].finish_reason]
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)



def test_completion_stream_carries_the_reasoning_as_the_plain_answer_does(tiny_model_dir):
    """Our ``reasoning`` extension on /v1/completions: streamed, the block comes as ``reasoning_content`` pieces."""
    from engine_backend.async_engine import AsyncLLMEngine
    from engine_backend.server import ServerThread, create_app

    with AsyncLLMEngine(LLMEngine(str(tiny_model_dir("qwen3")))) as aengine, \
            ServerThread(create_app(aengine, KEY, aengine.model_name)) as srv, \
            openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0, timeout=120) as c:
        kwargs = dict(model=aengine.model_name, prompt=PROMPTS[0], max_tokens=6,
                      extra_body={"reasoning": True, "max_reasoning_tokens": 10})
        plain = c.completions.create(**kwargs).choices[0]
        chunks = list(c.completions.create(**kwargs, stream=True))
    assert plain.model_extra["reasoning_content"]
    thought = "".join((ch.model_extra or {}).get("reasoning_content") or "" for k in chunks for ch in k.choices)
    assert (thought, "".join(ch.text for k in chunks for ch in k.choices)) == \
        (plain.model_extra["reasoning_content"], plain.text)

def test_stream_of_a_rejected_prompt_is_a_400(client, model):
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model=model, prompt="word " * 3000, max_tokens=4, stream=True)


def test_stream_with_a_bad_row_keeps_the_others(client, model, reference):
    texts, finish, _ = streamed_text(client.completions.create(
        model=model, prompt=[PROMPTS[0], "word " * 3000], max_tokens=8, stream=True), n=2)
    assert finish[1] == "error" and texts[1] == ""
    assert texts[0] == reference.generate([PROMPTS[0]], SamplingParams(max_tokens=8))[0].text


def test_client_leaving_mid_stream_frees_its_pages(server, aengine, model):
    before = aengine.stats()
    body = {"model": model, "prompt": PROMPTS, "max_tokens": 1800, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as http:
        with http.stream("POST", "/v1/completions", json=body) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()
            assert next(line for line in lines if line.startswith("data: {"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stats = aengine.stats()
        if stats["running"] == 0 and stats["waiting"] == 0:
            break
        time.sleep(0.05)
    assert stats["requests_aborted"] - before["requests_aborted"] == len(PROMPTS)
    assert stats["kv_pages_used"] == 0
    assert stats["generated_tokens"] - before["generated_tokens"] < 1800 * len(PROMPTS)


# --- n, seeds -------------------------------------------------------------------------------------------------
def test_n_choices(client, model):
    one = client.completions.create(model=model, prompt=PROMPTS[:2], max_tokens=8)
    three = client.completions.create(model=model, prompt=PROMPTS[:2], max_tokens=8, n=3)
    assert [c.index for c in three.choices] == list(range(6))
    assert [c.text for c in three.choices] == [one.choices[0].text] * 3 + [one.choices[1].text] * 3  # greedy
    assert three.usage.prompt_tokens == one.usage.prompt_tokens  # each prompt counts once, as OpenAI's usage does
    assert three.usage.completion_tokens == 3 * one.usage.completion_tokens
    _, _, streamed = streamed_text(client.completions.create(model=model, prompt=PROMPTS[:2], max_tokens=8, n=3,
                                                             stream=True, stream_options={"include_usage": True}), n=6)
    assert (streamed.prompt_tokens, streamed.completion_tokens) == (three.usage.prompt_tokens,
                                                                    three.usage.completion_tokens)
    sampled = dict(model=model, messages=MESSAGES, max_tokens=12, n=4, temperature=1.0, seed=11)
    first = client.chat.completions.create(**sampled)
    again = client.chat.completions.create(**sampled)
    texts = [c.message.content for c in first.choices]
    assert texts == [c.message.content for c in again.choices]  # seeded: reproducible
    assert len(set(texts)) > 1  # ... yet n different draws


# --- logprobs ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf(model_dir):
    return transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def hf_rows(hf, prompt_ids, token_ids):
    with torch.no_grad():
        logits = hf(torch.tensor([list(prompt_ids) + list(token_ids)])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)[len(prompt_ids) - 1:-1]


def test_completion_logprobs_equal_transformers(client, model, hf, reference):
    resp = client.completions.create(model=model, prompt=PROMPTS[1], max_tokens=8, logprobs=5,
                                     extra_body={"ignore_eos": True})
    choice = resp.choices[0]
    token_ids = choice.model_extra["token_ids"]
    prompt_ids = reference.tokenizer.encode(PROMPTS[1])
    rows = hf_rows(hf, prompt_ids, token_ids)
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(token_ids) == 8
    for i, t in enumerate(token_ids):
        assert lp.token_logprobs[i] == pytest.approx(float(rows[i, t]), abs=2e-4)
        assert max(lp.top_logprobs[i].values()) == pytest.approx(float(rows[i].max()), abs=2e-4)
        assert len(lp.top_logprobs[i]) <= 5
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)


def test_chat_logprobs_streamed_equal_plain(client, model):
    kwargs = dict(model=model, messages=MESSAGES, max_tokens=10, logprobs=True, top_logprobs=3)
    plain = client.chat.completions.create(**kwargs).choices[0].logprobs.content
    streamed = [e for chunk in client.chat.completions.create(**kwargs, stream=True)
                for c in chunk.choices if c.logprobs for e in c.logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in plain]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in plain], abs=1e-4)
    for e in plain:
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0].logprob == pytest.approx(e.logprob, abs=1e-5)
        assert bytes(e.bytes).decode("utf-8", "replace") == e.token or e.token.startswith("bytes:")


# --- penalties, bias, stops, usage ------------------------------------------------------------------------------
def test_penalties_and_bias_reach_the_engine(client, model, reference):
    kwargs = dict(max_tokens=12, presence_penalty=0.7, frequency_penalty=1.3)
    got = client.completions.create(model=model, prompt=PROMPTS[2], **kwargs, extra_body={"ignore_eos": True})
    ref, = reference.generate([PROMPTS[2]], SamplingParams(ignore_eos=True, **kwargs))
    assert got.choices[0].text == ref.text
    forced = client.completions.create(model=model, prompt=PROMPTS[2], max_tokens=3, logit_bias={"42": 100},
                                       extra_body={"ignore_eos": True})
    assert forced.choices[0].model_extra["token_ids"] == [42, 42, 42]


def test_cached_tokens_in_usage(client, model):
    prompt = PREFIX * 4 + "Rich coffee notes."
    client.completions.create(model=model, prompt=prompt, max_tokens=2)
    again = client.completions.create(model=model, prompt=prompt, max_tokens=2)
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert 0 < cached <= again.usage.prompt_tokens and cached >= again.usage.prompt_tokens - 16


def test_json_schema_response_format(client, model):
    schema = {"type": "object", "properties": {"label": {"enum": ["positive", "negative"]},
                                               "stars": {"type": "integer"}}, "required": ["label", "stars"]}
    resp = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=40, response_format={
        "type": "json_schema", "json_schema": {"name": "review", "schema": schema}})
    value = json.loads(resp.choices[0].message.content)
    assert value["label"] in ("positive", "negative") and isinstance(value["stars"], int)


# --- what is refused --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,needle", [
    ({"n": MAX_N + 1}, "n must be"),
    ({"logprobs": 21}, "logprobs"),
    ({"extra_body": {"logprobs": "yes"}}, "logprobs"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"logit_bias": {"x": 1}}, "logit_bias"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"best_of": 3}, "best_of"),
    ({"echo": True}, "echo"),
])
def test_completion_refusals(client, model, kwargs, needle):
    with pytest.raises(openai.BadRequestError, match=needle):
        client.completions.create(model=model, prompt="hi", max_tokens=2, **kwargs)


@pytest.mark.parametrize("kwargs,needle", [
    ({"top_logprobs": 2}, "top_logprobs needs logprobs"),
    ({"logprobs": True, "top_logprobs": 30}, "top_logprobs"),
    ({"extra_body": {"logprobs": 3}}, "boolean"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"response_format": {"type": "xml"}}, "response_format"),
])
def test_chat_refusals(client, model, kwargs, needle):
    with pytest.raises(openai.BadRequestError, match=needle):
        client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2, **kwargs)

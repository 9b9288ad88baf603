"""The OpenAI-compatible server: real engine on a tiny checkpoint, real uvicorn, real httpx clients."""
from __future__ import annotations

import asyncio
import re
import threading
import time

import httpx
import pytest

from engine_backend import LLMEngine, SamplingParams
from engine_backend.async_engine import AsyncLLMEngine, EngineClosedError, EngineError

KEY = "test-key-123"
PREFIX = "Classify the sentiment of this beer review as positive or negative.\nReview: "
REVIEWS = ["Crisp and clean.", "Tasted like cardboard.", "Rich coffee notes, lovely.", "Flat and sweet.",
           "Juicy citrus hops.", "Skunky and stale.", "Smooth caramel malt.", "Watery, no flavour."]
PROMPTS = [f"{PREFIX}{r}\nSentiment:" for r in REVIEWS]


@pytest.fixture(scope="module")
def reference(model_dir):
    """A second engine on the same checkpoint: what the server must reproduce (greedy)."""
    return LLMEngine(model=model_dir)


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        yield c


def complete(client, **body):
    resp = client.post("/v1/completions", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_health_needs_no_token(server):
    resp = httpx.get(f"{server.url}/health")
    assert resp.status_code == 200 and resp.json()["status"] == "ok"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                                     {"Authorization": f"Basic {KEY}"}])
@pytest.mark.parametrize("method,path", [("GET", "/v1/models"), ("POST", "/v1/completions"),
                                         ("POST", "/v1/chat/completions"), ("GET", "/metrics")])
def test_auth_refused(server, headers, method, path):
    resp = httpx.request(method, server.url + path, headers=headers, json={"prompt": "hi"})
    assert resp.status_code == 401
    err = resp.json()["error"]
    assert err["type"] == "authentication_error" and "API key" in err["message"]


def test_models(client, aengine):
    data = client.get("/v1/models").json()["data"]
    assert [m["id"] for m in data] == [aengine.model_name]


def test_single_completion(client, reference):
    body = complete(client, prompt=PROMPTS[0], max_tokens=6)
    (choice,) = body["choices"]
    (expected,) = reference.generate([PROMPTS[0]], SamplingParams(max_tokens=6))
    assert choice["text"] == expected.text and choice["token_ids"] == expected.token_ids
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(expected.prompt_token_ids)
    assert usage["completion_tokens"] == len(expected.token_ids)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert "cached_tokens" in usage["prompt_tokens_details"]


def test_batch_equals_embedded_engine(client, reference):
    body = complete(client, prompt=PROMPTS, max_tokens=8, temperature=0)
    expected = reference.generate(PROMPTS, SamplingParams(max_tokens=8))
    assert [c["index"] for c in body["choices"]] == list(range(len(PROMPTS)))
    assert [c["text"] for c in body["choices"]] == [o.text for o in expected]
    assert [c["token_ids"] for c in body["choices"]] == [o.token_ids for o in expected]
    # The shared prefix is served from the prefix cache for all but the first prompt.
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    assert body["usage"]["prompt_tokens"] == sum(len(o.prompt_token_ids) for o in expected)


def test_token_id_prompts(client, reference):
    ids = [reference.tokenizer.encode(p) for p in PROMPTS[:3]]
    expected = reference.generate(ids, SamplingParams(max_tokens=5))
    single = complete(client, prompt=ids[0], max_tokens=5)
    assert single["choices"][0]["token_ids"] == expected[0].token_ids
    batch = complete(client, prompt=ids, max_tokens=5)
    assert [c["token_ids"] for c in batch["choices"]] == [o.token_ids for o in expected]


def test_chat_completion(client, reference):
    messages = [{"role": "system", "content": "You classify reviews."},
                {"role": "user", "content": "Is this review positive? Crisp and clean."}]
    resp = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 6})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    ids = reference.tokenizer.encode_chat(messages, add_generation_prompt=True)
    assert ids.count(ids[0]) == 1 or ids[0] != reference.tokenizer.bos_token_id  # one BOS, from the template
    (expected,) = reference.generate([ids], SamplingParams(max_tokens=6))
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": expected.text}
    assert body["usage"]["prompt_tokens"] == len(expected.prompt_token_ids)


@pytest.mark.parametrize("field", ["choices", "guided_choice"])
def test_choices_constraint(client, field):
    labels = ["positive", "negative"]
    body = complete(client, prompt=PROMPTS[:4], max_tokens=8, **{field: labels})
    assert [c["text"] for c in body["choices"]] and all(c["text"] in labels for c in body["choices"])


JSON_SCHEMA = {"type": "object", "properties": {"sentiment": {"enum": ["positive", "negative"]},
                                               "stars": {"type": "integer", "minimum": 1, "maximum": 5}},
               "required": ["sentiment", "stars"]}


@pytest.mark.parametrize("fields", [
    {"response_format": {"type": "json_schema", "json_schema": {"name": "review", "schema": JSON_SCHEMA}}},
    {"guided_json": JSON_SCHEMA},
    {"structured_outputs": {"json": JSON_SCHEMA}},
], ids=["response_format", "guided_json", "structured_outputs"])
def test_json_schema_outputs_validate_and_equal_the_engine(client, reference, fields):
    import json

    import jsonschema

    body = complete(client, prompt=PROMPTS[:3], max_tokens=64, **fields)
    expected = reference.generate(PROMPTS[:3], SamplingParams(max_tokens=64, json_schema=JSON_SCHEMA))
    assert [c["text"] for c in body["choices"]] == [e.text for e in expected]
    for choice in body["choices"]:
        if choice["finish_reason"] == "stop":
            jsonschema.validate(json.loads(choice["text"]), JSON_SCHEMA)
    assert any(c["finish_reason"] == "stop" for c in body["choices"])


def test_regex_and_json_object(client):
    body = complete(client, prompt=PROMPTS[:2], max_tokens=8, guided_regex="(yes|no)")
    assert all(c["text"] in ("yes", "no") for c in body["choices"])
    body = complete(client, prompt=PROMPTS[:1], max_tokens=200, response_format={"type": "json_object"})
    assert body["choices"][0]["text"].startswith("{")


@pytest.mark.parametrize("body,needle", [
    ({"prompt": "hi", "response_format": {"type": "xml"}}, "response_format type"),
    ({"prompt": "hi", "response_format": {"type": "json_schema"}}, "json_schema needs"),
    ({"prompt": "hi", "guided_json": JSON_SCHEMA, "guided_regex": "a+"}, "ask for different outputs"),
    ({"prompt": "hi", "structured_outputs": {"grammar": "x"}}, "structured_outputs takes"),
    ({"prompt": "hi", "guided_json": "{not json"}, "not valid JSON"),
])
def test_bad_output_constraints_are_400(client, body, needle):
    resp = client.post("/v1/completions", json=body)
    assert resp.status_code == 400, resp.text
    assert needle in resp.json()["error"]["message"]


@pytest.mark.parametrize("body,needle", [
    ({"prompt": "hi", "temperature": -1}, "temperature"),
    ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "hi", "max_tokens": "5"}, "max_tokens"),
    ({"prompt": "hi", "top_p": 0}, "top_p"),
    ({"prompt": "hi", "n": 0}, "n must be"),
    ({"prompt": "hi", "stream": "yes"}, "stream"),
    ({"prompt": "hi", "choices": []}, "choices"),
    ({"prompt": "hi", "stop": 5}, "stop"),
    ({"prompt": "hi", "seed": 2**70}, "seed must be a 64-bit integer"),
    ({"prompt": "hi", "logit_bias": {"\u00b2": 1}}, "logit_bias keys"),  # a digit to str.isdigit, not to int()
    ({"prompt": "hi", "logit_bias": {"\u0661": 1}}, "logit_bias keys"),  # Arabic-Indic one: int() reads it as 1
    ({"prompt": ""}, "empty"),
    ({"prompt": []}, "empty"),
    ({"prompt": [1, "a"]}, "prompt must be"),
    ({}, "prompt"),
    ({"prompt": "hi", "model": "no-such-model"}, "does not exist"),
    ({"prompt": "word " * 3000}, "context"),
])
def test_bad_requests_are_400(client, body, needle):
    resp = client.post("/v1/completions", json=body)
    assert resp.status_code in (400, 404), resp.text
    err = resp.json()["error"]
    assert needle in err["message"] and err["type"] == "invalid_request_error"


def test_malformed_json_is_400(client):
    resp = client.post("/v1/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and "error" in resp.json()


def test_one_bad_prompt_in_a_batch(client, reference):
    prompts = [PROMPTS[0], "word " * 3000, PROMPTS[1]]
    body = complete(client, prompt=prompts, max_tokens=4)
    ok, bad, ok2 = body["choices"]
    assert bad["finish_reason"] == "error" and "context" in bad["error"]
    expected = reference.generate([PROMPTS[0], PROMPTS[1]], SamplingParams(max_tokens=4))
    assert [ok["token_ids"], ok2["token_ids"]] == [o.token_ids for o in expected]
    assert ok["finish_reason"] != "error" and ok2["finish_reason"] != "error"


def test_concurrent_clients(server, reference):
    """32 threads at once: every one gets its own correct answer, nobody hangs."""
    prompts = [f"{PREFIX}{REVIEWS[i % len(REVIEWS)]} (glass {i})\nSentiment:" for i in range(32)]
    expected = [o.token_ids for o in reference.generate(prompts, SamplingParams(max_tokens=6))]
    got: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
                got[i] = complete(c, prompt=prompts[i], max_tokens=6)["choices"][0]["token_ids"]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, 60 - (time.monotonic() - start)))
    assert not any(t.is_alive() for t in threads), "clients still waiting after 60 s"
    assert not errors, errors
    assert [got[i] for i in range(32)] == expected


def test_disconnect_aborts_and_frees_pages(server, aengine):
    before = aengine.stats()
    assert before["running"] == 0
    body = {"prompt": PROMPTS[0], "max_tokens": 1900, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                   timeout=httpx.Timeout(10, read=0.5))
    deadline = time.monotonic() + 15
    while True:
        stats = aengine.stats()
        if stats["requests_aborted"] > before["requests_aborted"] and stats["running"] == 0:
            break
        assert time.monotonic() < deadline, f"request not aborted: {stats}"
        time.sleep(0.02)
    assert stats["kv_pages_used"] == before["kv_pages_used"]
    assert stats["waiting"] == 0
    assert stats["generated_tokens"] - before["generated_tokens"] < 1900  # stopped early, not finished



@pytest.mark.parametrize("fields", [{"temperature": 1e-300}, {"temperature": 1e-40},
                                    {"temperature": 1.0, "top_p": 1e-300}, {"temperature": 1.0, "top_p": 1e-50}],
                         ids=["temperature-1e-300", "temperature-1e-40", "top_p-1e-300", "top_p-1e-50"])
def test_extreme_sampling_values_are_greedy_not_500(server, client, reference, fields):
    """Found by bench/engine_soak.py: a temperature that overflows float32 logits, or a top_p that rounds to 0 in
    float32, made the sampler raise, and the failed step answered 500 to every request sharing it. Both are valid
    OpenAI values; they mean "the most likely token"."""
    expected = reference.generate(PROMPTS[:3], SamplingParams(max_tokens=4))
    box: list = []  # the other client's answer
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as other:
        bystander = threading.Thread(target=lambda: box.append(other.post(
            "/v1/completions", json={"prompt": PROMPTS[1:3], "max_tokens": 4})))
        bystander.start()
        body = complete(client, prompt=PROMPTS[0], max_tokens=4, seed=7, **fields)
        bystander.join(60)
    assert body["choices"][0]["token_ids"] == expected[0].token_ids
    assert box and box[0].status_code == 200, box and box[0].text
    assert [c["token_ids"] for c in box[0].json()["choices"]] == [o.token_ids for o in expected[1:]]


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? '
                     r'(-?[0-9.eE+-]+|NaN|[+-]Inf)$')


def parse_prometheus(text: str) -> dict[str, float]:
    """A strict reader of the text format: every line is a comment or a well-formed sample."""
    samples, types = {}, {}
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            types[name] = kind
            continue
        if line.startswith("#"):
            assert line.startswith("# HELP "), line
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a Prometheus sample: {line!r}"
        assert m.group(1) in types, f"sample before its TYPE line: {line!r}"
        samples[line.rsplit(" ", 1)[0]] = float(m.group(4))
    return samples


def test_metrics(client):
    before = parse_prometheus(client.get("/metrics").text)
    usage = complete(client, prompt=PROMPTS[:2], max_tokens=3)["usage"]
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    after = parse_prometheus(resp.text)
    delta = {k: after[k] - before.get(k, 0) for k in after}
    assert delta["llm_sql_prompt_tokens_total"] == usage["prompt_tokens"]
    assert delta["llm_sql_cached_prompt_tokens_total"] == usage["prompt_tokens_details"]["cached_tokens"]
    assert delta["llm_sql_generated_tokens_total"] == usage["completion_tokens"]
    assert delta["llm_sql_requests_finished_total"] == 2
    for name in ("llm_sql_requests_waiting", "llm_sql_requests_running", "llm_sql_kv_pages_total",
                 "llm_sql_kv_pages_used", "llm_sql_preemptions_total", "llm_sql_swapped_out_blocks_total",
                 "llm_sql_swapped_in_blocks_total", "llm_sql_host_cached_prompt_tokens_total",
                 "llm_sql_host_kv_bytes_used", "llm_sql_swap_seconds_total", "llm_sql_swap_hidden_fraction"):
        assert name in after
    assert after["llm_sql_kv_pages_total"] > 0
    assert any(k.startswith("llm_sql_kv_cache_bytes{layer_type=") for k in after)
    assert after['llm_sql_http_requests_total{path="/v1/completions",code="200"}'] >= 1


# --- the async engine on its own (fault injection wraps the real engine) -------------------------
class FailingStep:
    """The real engine, except that its next ``step()`` raises once."""

    def __init__(self, engine):
        self._engine, self.armed = engine, True

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def step(self):
        if self.armed:
            self.armed = False
            raise RuntimeError("injected failure")
        return self._engine.step()


def test_engine_failure_reaches_waiting_callers_and_engine_goes_on(reference):
    with AsyncLLMEngine(FailingStep(reference)) as aengine:
        handle = aengine.submit(PROMPTS[:2], SamplingParams(max_tokens=3))
        with pytest.raises(EngineError, match="injected failure"):
            handle.result(timeout=30)
        assert not reference.has_unfinished_requests()  # the failed requests were freed
        outs = aengine.generate_sync(PROMPTS[:2], SamplingParams(max_tokens=3), timeout=30)
        assert [o.token_ids for o in outs] == [o.token_ids for o in reference.generate(PROMPTS[:2],
                                                                                        SamplingParams(max_tokens=3))]


def test_asyncio_api_and_rejections(reference):
    async def run(aengine):
        out = await aengine.generate(PROMPTS[0], SamplingParams(max_tokens=3))
        with pytest.raises(ValueError, match="context"):
            await aengine.generate("word " * 3000, SamplingParams(max_tokens=3))
        batch = await aengine.generate_batch(["", PROMPTS[1]], SamplingParams(max_tokens=3))
        # Cancelling a waiting coroutine aborts its request.
        task = asyncio.ensure_future(aengine.generate(PROMPTS[2], SamplingParams(max_tokens=1500, ignore_eos=True)))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return out, batch

    with AsyncLLMEngine(reference) as aengine:
        out, batch = asyncio.run(run(aengine))
        assert out.finish_reason in ("stop", "length") and len(out.token_ids) <= 3
        assert batch[0].finish_reason == "error" and "empty" in batch[0].error
        assert batch[1].finish_reason in ("stop", "length")
        deadline = time.monotonic() + 10
        while aengine.stats()["running"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert aengine.stats()["requests_aborted"] == 1


def test_shutdown_fails_pending_and_refuses_new(reference):
    aengine = AsyncLLMEngine(reference)
    handle = aengine.submit([PROMPTS[0]], SamplingParams(max_tokens=1500, ignore_eos=True))
    time.sleep(0.1)
    aengine.shutdown()
    with pytest.raises(EngineClosedError):
        handle.result(timeout=10)
    with pytest.raises(EngineClosedError):
        aengine.submit([PROMPTS[0]], SamplingParams())
    assert not reference.has_unfinished_requests()

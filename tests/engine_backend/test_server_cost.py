"""The server's cost endpoints (``GET /v1/llm_sql/cost``, ``POST /v1/llm_sql/cached_prefix_blocks``), the busy-period
history ``AsyncLLMEngine`` keeps for them, and ``OpenAIBackend`` asking for them: a real engine on a tiny checkpoint,
real uvicorn, real httpx."""
from __future__ import annotations

import json
import sys
import threading
import time

import httpx
import pytest

from engine_backend import LLMEngine, SamplingParams
from engine_backend.async_engine import AsyncLLMEngine
from engine_backend.backends import openai_http
from engine_backend.backends.base import GenerationRequest, params_kind
from engine_backend.backends.embedded import EmbeddedBackend, simulate_steps
from engine_backend.backends.openai_http import OpenAIBackend
from engine_backend import server as server_module
from engine_backend.server import ServerThread, create_app

KEY = "cost-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
BLOCK, SEQS, TOKENS = 16, 128, 1024  # LLMEngine's defaults
PREFIX = list(range(3, 43))  # 40 tokens: two full blocks shared by the prompts below


def prompts(n: int, tail: int = 7, start: int = 100) -> list[list[int]]:
    return [PREFIX + [start + i] * tail for i in range(n)]


@pytest.fixture
def serve(model_dir):
    """``serve(**engine_kwargs) -> (AsyncLLMEngine, ServerThread)``: a fresh engine and server, closed after the test."""
    opened = []

    def start(app_wrapper=None, **engine_kwargs):
        aengine = AsyncLLMEngine(LLMEngine(model=model_dir, **engine_kwargs))
        app = create_app(aengine, KEY, aengine.model_name)
        srv = ServerThread(app_wrapper(app) if app_wrapper else app).start()
        opened.append((aengine, srv))
        return aengine, srv

    yield start
    for aengine, srv in opened:
        srv.stop()
        aengine.shutdown()


@pytest.fixture(scope="module")
def idle(model_dir):
    """One engine and server that run nothing, for the tests that only knock on the door."""
    with AsyncLLMEngine(LLMEngine(model=model_dir)) as aengine, \
            ServerThread(create_app(aengine, KEY, aengine.model_name)) as srv:
        yield aengine, srv


def client(srv) -> httpx.Client:
    return httpx.Client(base_url=srv.url, headers=AUTH, timeout=60)


def cost(srv) -> dict:
    resp = httpx.get(f"{srv.url}/v1/llm_sql/cost", headers=AUTH, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def complete(c: httpx.Client, **body) -> dict:
    resp = c.post("/v1/completions", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_history_records_the_responses_usage_and_simulated_steps(serve):
    aengine, srv = serve()
    first = cost(srv)
    assert first == {"model": aengine.model_name, "block_size": BLOCK, "max_num_seqs": SEQS,
                     "max_num_batched_tokens": TOKENS, "batches": [], "generated": {}}
    sent = prompts(6) + [[aengine.vocab_size + 5]]  # the last is rejected at admission: it never runs
    with client(srv) as c:
        began = time.perf_counter()
        body = complete(c, prompt=sent, max_tokens=5, ignore_eos=True)
        wall = time.perf_counter() - began
    ran = body["choices"][:6]
    assert body["choices"][6]["finish_reason"] == "error"
    cached = [ch["usage"]["prompt_tokens_details"]["cached_tokens"] for ch in ran]
    generated = [len(ch["token_ids"]) for ch in ran]
    assert sum(cached) > 0  # the shared prefix was served from the cache within the batch
    (batch,) = cost(srv)["batches"]
    assert batch["requests"] == 6
    assert batch["uncached_prompt_tokens"] == sum(ch["usage"]["prompt_tokens"] for ch in ran) - sum(cached)
    assert batch["generated_tokens"] == sum(generated) == 30
    assert batch["steps"] == simulate_steps(sent[:6], cached, generated, BLOCK, SEQS, TOKENS)
    assert 0 < batch["seconds"] <= wall
    kind = params_kind(SamplingParams(max_tokens=5, ignore_eos=True))
    assert cost(srv)["generated"] == {kind: [6, 30]}


def test_two_concurrent_client_batches_form_one_busy_period(serve):
    aengine, srv = serve()
    long_prompts, short_prompts = prompts(2, start=200), prompts(3, start=300)
    gate, busy_at_gate = threading.Event(), []

    def hold(engine):  # runs on the engine thread, between two steps
        busy_at_gate.append(engine.has_unfinished_requests())
        gate.wait(30)

    answers: dict = {}

    def send(name, ps, max_tokens):
        with client(srv) as c:
            answers[name] = complete(c, prompt=ps, max_tokens=max_tokens, ignore_eos=True)

    first = threading.Thread(target=send, args=("long", long_prompts, 300))
    first.start()
    deadline = time.monotonic() + 30
    while not aengine.call(lambda engine: engine.has_unfinished_requests()):  # the long batch is running
        assert time.monotonic() < deadline
        time.sleep(0.005)
    holder = threading.Thread(target=aengine.call, args=(hold,))
    holder.start()
    second = threading.Thread(target=send, args=("short", short_prompts, 4))
    second.start()
    time.sleep(0.5)  # the short batch is queued behind the held engine thread
    gate.set()
    for t in (holder, first, second):
        t.join(60)
    assert busy_at_gate == [True]  # the long batch had not finished when the short one was queued
    (batch,) = cost(srv)["batches"]  # one period: both clients' batches
    choices = answers["long"]["choices"] + answers["short"]["choices"]
    cached = [ch["usage"]["prompt_tokens_details"]["cached_tokens"] for ch in choices]
    generated = [len(ch["token_ids"]) for ch in choices]
    assert batch["requests"] == 5
    assert batch["generated_tokens"] == sum(generated) == 2 * 300 + 3 * 4
    assert batch["uncached_prompt_tokens"] == sum(map(len, long_prompts + short_prompts)) - sum(cached)
    # steps as the embedded backend counts them, over the period's requests in the order admitted
    assert batch["steps"] == simulate_steps(long_prompts + short_prompts, cached, generated, BLOCK, SEQS, TOKENS)


def test_aborted_requests_leave_no_record_and_no_kind(serve):
    aengine, srv = serve()
    aborted = SamplingParams(max_tokens=200, ignore_eos=True)
    handle = aengine.submit(prompts(2), aborted)
    handle.abort()  # queued after the batch: admitted, then aborted before it finished
    assert [o.finish_reason for o in handle.result(30)] == ["abort", "abort"]
    rejected = aengine.generate_sync([[aengine.vocab_size]], SamplingParams(max_tokens=3))
    assert rejected[0].finish_reason == "error"
    history = aengine.history()
    assert not history.batches and not history.generated
    done = aengine.generate_sync(prompts(2), SamplingParams(max_tokens=3, ignore_eos=True))
    history = aengine.history()
    assert len(history.batches) == 1 and history.batches[0].requests == 2
    assert history.generated == {params_kind(SamplingParams(max_tokens=3, ignore_eos=True)):
                                 [2, sum(len(o.token_ids) for o in done)]}
    history.batches.clear()  # a copy: the engine's own is untouched
    assert len(aengine.history().batches) == 1



def test_a_batch_is_in_the_history_once_its_answer_is_out(serve):
    """The busy period is recorded before its last caller hears, not on the engine thread's next turn: with thread
    switches forced often, a caller reading ``history()`` at once would otherwise miss its own batch now and then."""
    aengine, _ = serve()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for i in range(1, 41):
            aengine.generate_sync(prompts(1, start=400 + i), SamplingParams(max_tokens=1))
            assert len(aengine.history().batches) == i
    finally:
        sys.setswitchinterval(interval)


def test_cached_prefix_blocks_are_the_engines(serve, monkeypatch):
    aengine, srv = serve()
    probe = prompts(2) + [PREFIX + [7] * 30, PREFIX[:20] + [9] * 20, [5] * 50, [], [1]]
    with client(srv) as c:
        resp = c.post("/v1/llm_sql/cached_prefix_blocks", json={"token_ids": probe})
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"blocks": [0] * len(probe)}  # a fresh engine caches nothing
        complete(c, prompt=prompts(2), max_tokens=2)
        resp = c.post("/v1/llm_sql/cached_prefix_blocks", json={"token_ids": probe})
    blocks = resp.json()["blocks"]
    direct = EmbeddedBackend(engine=aengine.engine).cached_prefix_blocks(probe)  # the engine is idle now
    assert blocks == direct == aengine.cached_prefix_blocks(probe)
    assert blocks[:4] == [2, 2, 2, 1] and blocks[4:] == [0, 0, 0]
    backend = OpenAIBackend(srv.url, api_key=KEY, max_retries=0)
    monkeypatch.setattr(openai_http, "PREFIX_CHUNK_PROMPTS", 2)  # several requests, one answer
    assert backend.cached_prefix_blocks(probe) == blocks
    monkeypatch.setattr(openai_http, "PREFIX_CHUNK_TOKENS", 50)
    assert backend.cached_prefix_blocks(probe) == blocks
    assert backend.cached_prefix_blocks([]) == []
    backend.close()


@pytest.mark.parametrize("method,path", [("GET", "/v1/llm_sql/cost"), ("POST", "/v1/llm_sql/cached_prefix_blocks")])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}])
def test_cost_endpoints_need_the_key(idle, method, path, headers):
    _, srv = idle
    resp = httpx.request(method, f"{srv.url}{path}", headers=headers, json={"token_ids": [[1]]}, timeout=30)
    assert resp.status_code == 401 and resp.json()["error"]["type"] == "authentication_error"


BAD_BODIES = [
    (b"not json", "JSON object"),
    (b"[[1, 2]]", "JSON object"),
    (b'{"ids": [[1]]}', "JSON object"),
    (b'{"token_ids": 5}', "list of token-id lists"),
    (b'{"token_ids": [1, 2]}', "list of token-id lists"),
    (b'{"token_ids": [[1], "ab"]}', "list of token-id lists"),
    (b'{"token_ids": [[-1]]}', "[0, 512)"),
    (b'{"token_ids": [[1, 512]]}', "[0, 512)"),
    (b'{"token_ids": [[1.0]]}', "[0, 512)"),
    (b'{"token_ids": [[true]]}', "[0, 512)"),
    (b'{"token_ids": [[1], [2], [3], [4]]}', "at most 3"),
    (b'{"token_ids": [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5]]}', "at most 10"),
]


def test_malformed_prefix_requests_are_400(idle, monkeypatch):
    aengine, srv = idle
    assert aengine.vocab_size == 512
    monkeypatch.setattr(server_module, "MAX_PREFIX_PROMPTS", 3)
    monkeypatch.setattr(server_module, "MAX_PREFIX_TOKENS", 10)
    with client(srv) as c:
        for body, needle in BAD_BODIES:
            resp = c.post("/v1/llm_sql/cached_prefix_blocks", content=body, headers={"Content-Type": "application/json"})
            assert resp.status_code == 400, (body, resp.text)
            err = resp.json()["error"]
            assert err["type"] == "invalid_request_error" and needle in err["message"], (body, err)
        monkeypatch.setattr(server_module, "MAX_PREFIX_BODY_BYTES", 40)
        resp = c.post("/v1/llm_sql/cached_prefix_blocks", json={"token_ids": [[1] * 30]})
        assert resp.status_code == 413 and "at most 40" in resp.json()["error"]["message"]
        resp = c.post("/v1/llm_sql/cached_prefix_blocks", json={"token_ids": [[1, 2], [3]]})
        assert resp.status_code == 200 and resp.json() == {"blocks": [0, 0]}
        assert c.get("/v1/llm_sql/cost").status_code == 200  # the engine goes on
    backend = OpenAIBackend(srv.url, api_key=KEY, max_retries=0)
    with pytest.raises(openai_http.BackendError, match="integers in"):
        backend.cached_prefix_blocks([[600]])
    backend.close()


def test_openai_backend_history_is_the_servers(serve):
    _, srv = serve()
    backend = OpenAIBackend(srv.url, api_key=KEY, max_retries=0, batch_size=4)
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    backend.generate([GenerationRequest(p, params) for p in prompts(6)])  # two HTTP batches, two periods
    backend.generate([GenerationRequest(p, SamplingParams(max_tokens=2)) for p in prompts(3, start=400)])
    history = backend.history()
    answer = cost(srv)
    assert [vars(b) for b in history.batches] == answer["batches"] and len(answer["batches"]) == 3
    assert all(b.steps is not None and b.steps > 0 for b in history.batches)
    assert history.generated_per_request(params_kind(params)) == (4.0, 6)
    assert all(b.steps is None for b in backend._totals.history.batches)  # what the client measured has none
    assert backend.prefix_block_size() == BLOCK
    toks, cached, generated = prompts(5), [0, 32, 32, 32, 32], [3, 3, 1, 1, 8]
    assert backend.steps_for(toks, cached, generated) == simulate_steps(toks, cached, generated, BLOCK, SEQS, TOKENS)
    backend.close()


def test_a_server_without_the_endpoints_falls_back_to_the_client(serve):
    asked = []

    def without_cost(app):  # our server as an older version (or vLLM) has it: no /v1/llm_sql/*
        async def wrapped(scope, receive, send):
            if scope["type"] == "http" and scope["path"].startswith("/v1/llm_sql/"):
                asked.append(scope["path"])
                await send({"type": "http.response.start", "status": 404,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": b'{"detail": "Not Found"}'})
                return
            await app(scope, receive, send)
        return wrapped

    _, srv = serve(app_wrapper=without_cost)
    backend = OpenAIBackend(srv.url, api_key=KEY, max_retries=0)
    backend.generate([GenerationRequest(p, SamplingParams(max_tokens=2)) for p in prompts(3)])
    assert backend.server_cost() is None
    history = backend.history()
    assert history is backend._totals.history and len(history.batches) == 1 and history.batches[0].steps is None
    assert backend.prefix_block_size() is None
    assert backend.steps_for(prompts(1), [0], [1]) is None
    assert backend.cached_prefix_blocks(prompts(1)) is None
    assert asked == ["/v1/llm_sql/cost"]  # the 404 is remembered
    backend.close()


def test_server_errors_other_than_404_raise(idle):
    _, srv = idle
    backend = OpenAIBackend(srv.url, api_key="wrong", max_retries=0)
    with pytest.raises(openai_http.BackendError, match="refused the API key"):
        backend.server_cost()
    backend.close()


def test_no_prefix_cache(serve):
    aengine, srv = serve(enable_prefix_caching=False)
    assert EmbeddedBackend(engine=aengine.engine).prefix_block_size() is None
    backend = OpenAIBackend(srv.url, api_key=KEY, max_retries=0)
    backend.generate([GenerationRequest(p, SamplingParams(max_tokens=3, ignore_eos=True)) for p in prompts(3)])
    answer = cost(srv)
    assert answer["block_size"] is None and backend.prefix_block_size() is None
    (batch,) = answer["batches"]
    assert batch["uncached_prompt_tokens"] == sum(map(len, prompts(3)))  # nothing was cached
    assert batch["steps"] == backend.steps_for(prompts(3), [0, 0, 0], [3, 3, 3]) == \
        simulate_steps(prompts(3), [0, 0, 0], [3, 3, 3], None, SEQS, TOKENS)
    assert backend.cached_prefix_blocks(prompts(3)) == [0, 0, 0]
    backend.close()


SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
KINDS = [
    SamplingParams(max_tokens=6, stop=["\n", "."]),
    SamplingParams(max_tokens=5, stop=["x"], stop_token_ids=[7]),
    SamplingParams(max_tokens=8, choices=[" yes", " no", " maybe"]),
    SamplingParams(max_tokens=12, json_schema=SCHEMA),
    SamplingParams(max_tokens=12, json_schema=json.dumps(SCHEMA)),  # the same schema as JSON text
    SamplingParams(max_tokens=4, regex="[a-c]{1,3}"),
]


def test_params_kind_survives_the_wire(serve):
    """The kind the server files a request under (from the SamplingParams it rebuilt from the HTTP body) is the
    kind of the SamplingParams the client sent: what the estimator looks the mean output length up by."""
    _, srv = serve()
    backend = OpenAIBackend(srv.url, api_key=KEY, max_retries=0)
    expected: dict[str, list[int]] = {}
    for params in KINDS:
        results = backend.generate([GenerationRequest(p, params) for p in prompts(2)])
        assert all(r.ok for r in results), [r.error for r in results]
        entry = expected.setdefault(params_kind(params), [0, 0])
        entry[0] += 2
        entry[1] += sum(r.completion_tokens for r in results)
    assert len(expected) == len(KINDS) - 1  # a schema as a dict or as its text is one kind
    assert backend.server_cost()["generated"] == expected
    backend.close()

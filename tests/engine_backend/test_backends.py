"""Backends: embedded engine, OpenAI-compatible HTTP (against our real server), vLLM availability."""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from engine_backend import SamplingParams
from engine_backend.backends import (BackendError, GenerationRequest, GenerationResult, make_backend)
from engine_backend.backends.embedded import EmbeddedBackend
from engine_backend.backends.openai_http import OpenAIBackend

KEY = "backend-test-key"
PREFIX = "Classify the sentiment of this beer review as positive or negative.\nReview: "
REVIEWS = ["Crisp and clean.", "Tasted like cardboard.", "Rich coffee notes.", "Flat and sweet.",
           "Juicy citrus hops.", "Skunky and stale.", "Smooth caramel malt.", "Watery, no flavour.",
           "Roasty and warming.", "Soapy finish."]
TOO_LONG = "word " * 3000


def requests_mixed() -> list[GenerationRequest]:
    free = SamplingParams(max_tokens=6)
    labelled = SamplingParams(max_tokens=6, choices=["positive", "negative"])
    reqs = [GenerationRequest(f"{PREFIX}{r}\nSentiment:", labelled if i % 3 == 0 else free)
            for i, r in enumerate(REVIEWS)]
    reqs.insert(4, GenerationRequest(TOO_LONG, free))  # fails alone, the others must survive
    return reqs


@pytest.fixture(scope="module")
def embedded(model_dir):
    with EmbeddedBackend(model=model_dir) as backend:
        yield backend


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def comparable(results: list[GenerationResult]) -> list[tuple]:
    return [(r.text, r.token_ids, r.finish_reason, r.error is None, r.prompt_tokens, r.completion_tokens)
            for r in results]


def test_embedded_keeps_order_and_isolates_errors(embedded):
    reqs = requests_mixed()
    results = embedded.generate(reqs)
    assert len(results) == len(reqs)
    bad = results[4]
    assert bad.finish_reason == "error" and bad.text is None and "context" in bad.error
    for req, res in zip(reqs, results):
        if req.prompt is TOO_LONG:
            continue
        assert res.error is None and res.completion_tokens == len(res.token_ids) > 0
        if req.params.choices:
            assert res.text in req.params.choices
    # The same batch alone, one by one, gives the same tokens (order is kept, nothing mixed up).
    for i in (0, 5, 10):
        (alone,) = embedded.generate([reqs[i]])
        assert alone.token_ids == results[i].token_ids
    stats = embedded.stats()
    assert stats["requests"] == len(reqs) + 3 and stats["errors"] == 1
    assert 0 < stats["cached_prompt_tokens"] <= stats["prompt_tokens"]
    assert stats["engine"]["generated_tokens"] == stats["generated_tokens"]


def test_openai_backend_equals_embedded(server, aengine, embedded):
    reqs = requests_mixed()
    expected = embedded.generate(reqs)
    with make_backend("openai", base_url=server.url, api_key=KEY, batch_size=4) as backend:
        got = backend.generate(reqs)
        stats = backend.stats()
    assert comparable(got) == comparable(expected)
    assert "context" in got[4].error
    assert stats["requests"] == len(reqs) and stats["errors"] == 1 and stats["retries"] == 0
    assert stats["cached_prompt_tokens"] > 0  # the shared prefix hit the server's prefix cache
    assert backend.model == aengine.model_name  # discovered from /v1/models


def test_openai_backend_sends_grammar_constraints(server, embedded):
    """json_schema and regex reach the server (as response_format / structured_outputs) and decode as embedded."""
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 1,
                                                                                 "maximum": 5}},
              "required": ["ok", "n"]}
    reqs = [GenerationRequest(prompt=f"Row {i}: is it good?", params=SamplingParams(max_tokens=40, **c))
            for i, c in enumerate([{"json_schema": schema}, {"regex": "(yes|no)[.!]"}, {"json_schema": schema}])]
    expected = embedded.generate(reqs)
    with make_backend("openai", base_url=server.url, api_key=KEY) as backend:
        got = backend.generate(reqs)
    assert comparable(got) == comparable(expected)
    assert got[1].text in {"yes.", "yes!", "no.", "no!"}


def test_openai_backend_concurrency_keeps_order(server, aengine, embedded):
    reqs = requests_mixed()
    expected = embedded.generate(reqs)
    with OpenAIBackend(server.url + "/v1", api_key=KEY, model=aengine.model_name, batch_size=2,
                       max_concurrency=3) as backend:
        assert comparable(backend.generate(reqs)) == comparable(expected)


def test_openai_backend_wrong_key(server, aengine):
    with OpenAIBackend(server.url, api_key="nope", model=aengine.model_name, max_retries=0) as backend:
        with pytest.raises(BackendError, match="API key"):
            backend.generate(requests_mixed()[:1])


def test_openai_backend_closed_port_raises_after_bounded_retries():
    url = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with OpenAIBackend(url, api_key=KEY, model="m", max_retries=3, backoff=0.01, timeout=2) as backend:
        with pytest.raises(BackendError) as info:
            backend.generate([GenerationRequest("hi", SamplingParams())])
        assert backend.stats()["retries"] == 3
    assert url in str(info.value) and "4 attempts" in str(info.value)
    assert time.monotonic() - start < 10


class FlakyProxy:
    """A tiny HTTP server in front of ours: fails the first ``failures`` requests with 503, or
    rejects (like vLLM) any batch holding a prompt that contains ``reject``; otherwise forwards."""

    def __init__(self, target: str, failures: int = 0, reject: str | None = None):
        self.target, self.failures, self.reject, self.seen = target, failures, reject, []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                proxy.seen.append(json.loads(body))
                prompts = proxy.seen[-1].get("prompt")
                if len(proxy.seen) <= proxy.failures:
                    return self.answer(503, b'{"error": {"message": "warming up"}}', {"Retry-After": "0"})
                if proxy.reject and any(proxy.reject in p for p in prompts):
                    return self.answer(400, b'{"error": {"message": "prompt too long for this server"}}')
                resp = httpx.post(proxy.target + self.path, content=body, timeout=60,
                                  headers={"Authorization": self.headers["Authorization"],
                                           "Content-Type": "application/json"})
                self.answer(resp.status_code, resp.content)

            def answer(self, status, payload, headers=None):
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_openai_backend_retries_503(server, aengine, embedded):
    labelled = SamplingParams(max_tokens=6, choices=["positive", "negative"])
    reqs = [GenerationRequest(f"{PREFIX}{r}\nSentiment:", labelled) for r in REVIEWS[:3]]  # one batch
    proxy = FlakyProxy(server.url, failures=2)
    try:
        with OpenAIBackend(proxy.url, api_key=KEY, model=aengine.model_name, backoff=0.01) as backend:
            got = backend.generate(reqs)
            assert backend.stats()["retries"] == 2
    finally:
        proxy.close()
    assert comparable(got) == comparable(embedded.generate(reqs))
    assert len(proxy.seen) == 3 and proxy.seen[0] == proxy.seen[2]  # the same ordered batch, resent
    sent = proxy.seen[0]
    assert sent["prompt"] == [r.prompt for r in reqs]
    assert sent["choices"] == sent["guided_choice"] == ["positive", "negative"]


def test_openai_backend_isolates_a_batch_level_400(server, aengine, embedded):
    """A server that rejects a whole batch for one bad prompt (vLLM does): only that row fails."""
    reqs = [GenerationRequest(f"{PREFIX}{r}\nSentiment:", SamplingParams(max_tokens=4)) for r in REVIEWS[:5]]
    reqs[3] = GenerationRequest(f"{PREFIX}REJECT ME\nSentiment:", SamplingParams(max_tokens=4))
    proxy = FlakyProxy(server.url, reject="REJECT ME")
    try:
        with OpenAIBackend(proxy.url, api_key=KEY, model=aengine.model_name) as backend:
            got = backend.generate(reqs)
    finally:
        proxy.close()
    assert [r.finish_reason == "error" for r in got] == [False, False, False, True, False]
    assert "too long" in got[3].error
    good = [0, 1, 2, 4]
    assert [got[i].token_ids for i in good] == [r.token_ids for r in embedded.generate([reqs[i] for i in good])]


def test_vllm_backend_says_why_it_is_unavailable():
    try:
        import torch
        import vllm  # noqa: F401

        if torch.cuda.is_available():
            pytest.skip("vLLM and CUDA are both here: the backend is available")
    except ImportError:
        pass
    with pytest.raises(BackendError, match="vllm|CUDA"):
        make_backend("vllm", model="/nonexistent")


def test_make_backend_rejects_unknown_kind():
    with pytest.raises(ValueError, match="embedded, openai, vllm"):
        make_backend("tgi")

"""Engine server soak: 64 concurrent clients on loopback for a bounded time, some of them disconnecting
mid-request and some sending malformed requests.

What it measures
  ``llm-sql serve`` runs in a child process on a tiny random checkpoint (``make_tiny_model``), on 127.0.0.1
  with a bearer token and a small KV budget (--kv-cache-memory, so long requests preempt each other), so its
  file descriptors, memory and KV pages are its own. 64 client threads (httpx) send, until --seconds run out:
    normal      completions (one prompt, a batch of 2-8, ``choices``, ``response_format`` json_schema, sampled
                with a seed, a long one of 100-400 tokens) and chat completions (plain and json_schema); each
                answer is checked (one choice per prompt, a choice among the labels, JSON with the schema's keys,
                exactly max_tokens tokens where EOS is ignored);
    disconnect  a raw socket that sends a long generation and closes before the answer (half of them with a TCP
                reset), one that sends the headers and part of the body, or httpx giving up after 0.3 s;
    malformed   bad JSON, invalid UTF-8, a JSON array, deep nesting, wrong types, out-of-vocabulary token ids,
                prompts over the context (and a 200 KB one), unknown fields (answered), unknown paths and methods,
                extreme sampling values (temperature 1e-40, top_p 1e-300, seed 2**70);
    auth        no token, a wrong token, the token without "Bearer", Basic auth; /health needs none.
  Every second the child's open file descriptors and resident memory are sampled, and its /metrics read
  (requests running and waiting, KV pages held by requests).
  Pass criteria: no 5xx and no traceback in the server's log, every answer the status (and content) its request
  calls for, no request timing out (120 s) or its connection dropped or refused; once the clients stop, no
  request running or waiting and no KV page held (as before), file descriptors back to their idle level;
  resident memory flat after warm-up (growth under 32 MiB from the 25% mark to the end); no engine error; every
  request the engine took finished, aborted or rejected (its counters); and a greedy request answered at the
  end exactly as before the soak.

The machine is shared: the request rate is whatever the cores give; the criteria do not depend on it.

Usage: nice -n 5 python bench/engine_soak.py [--seconds 90] [--clients 64] [--quick] [--out bench/results]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import socket
import struct
import sys
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (str(REPO), str(REPO / "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)

from _common import (DEFAULT_OUT, checkpoint_dir, log, print_table, pyplot, save_png, start_serve,  # noqa: E402
                     stop_serve, write_json)

NAME = "engine_soak"
MEMORY_GROWTH_LIMIT_MIB = 32
FD_SLACK = 4  # uvicorn may still be closing a socket or two when the last sample is taken
PREFIX = "Classify the sentiment of this beer review as positive or negative.\nReview: "
REVIEWS = ["Crisp and clean.", "Tasted like cardboard.", "Rich coffee notes, lovely.", "Flat and sweet.",
           "Juicy citrus hops.", "Skunky and stale.", "Smooth caramel malt.", "Watery, no flavour."]
LABELS = ["positive", "negative"]
SCHEMA = {"type": "object", "properties": {"sentiment": {"enum": LABELS},
                                           "stars": {"type": "integer", "minimum": 1, "maximum": 5}},
          "required": ["sentiment", "stars"]}
GAUGES = ("llm_sql_requests_running", "llm_sql_requests_waiting", "llm_sql_kv_pages_used", "llm_sql_kv_pages_total",
          "llm_sql_kv_pages_cached", "llm_sql_kv_pages_peak", "llm_sql_preemptions_total",
          "llm_sql_requests_submitted_total", "llm_sql_requests_finished_total", "llm_sql_requests_aborted_total",
          "llm_sql_requests_rejected_total", "llm_sql_engine_errors_total")


def sample(pid: int) -> tuple[int, float]:
    """(open file descriptors, resident MiB) of ``pid``."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return fds, rss / 1024


def metrics(client) -> dict[str, float]:
    """The server's unlabelled Prometheus samples."""
    text = client.get("/metrics").text
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^([a-z_]+) (\S+)$", text, re.MULTILINE)}


def prompt(rng: random.Random) -> str:
    return f"{PREFIX}{rng.choice(REVIEWS)} (glass {rng.randrange(1000)})\nSentiment:"


class Soak:
    def __init__(self, url: str, key: str, clients: int, seed: int):
        self.url, self.key, self.clients, self.seed = url, key, clients, seed
        self.host, self.port = url.removeprefix("http://").rsplit(":", 1)
        self.port = int(self.port)
        self.statuses: Counter = Counter()  # status -> answers
        self.kinds: Counter = Counter()  # kind/case -> requests
        self.server_errors: list = []
        self.wrong: list = []  # (case, status, detail): an answer other than the request calls for
        self.client_errors: Counter = Counter()
        self.latencies: list[float] = []  # seconds, normal requests
        self.lock = threading.Lock()

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"}

    def record(self, case: str, status: int | None, ok: bool, detail: str = "") -> None:
        with self.lock:
            self.kinds[case] += 1
            if status is not None:
                self.statuses[status] += 1
                if status >= 500:
                    self.server_errors.append((case, status, detail[:300]))
            if not ok:
                self.wrong.append((case, status, detail[:300]))

    def send(self, client, case: str, expect: set[int], method: str, path: str, **kw):
        """One httpx request; the answer must be one of ``expect``. Returns the response (None on a transport
        failure, counted)."""
        import httpx
        try:
            resp = client.request(method, path, **kw)
        except httpx.HTTPError as e:
            with self.lock:
                self.client_errors[f"{case}: {type(e).__name__}"] += 1
            return None
        self.record(case, resp.status_code, resp.status_code in expect, resp.text)
        return resp

    # -- request kinds --

    def normal(self, client, rng: random.Random) -> None:
        case = rng.choice(["completion", "batch", "choices", "json_schema", "sampled", "chat", "chat_json", "long"])
        n = rng.randint(2, 8) if case == "batch" else rng.randint(1, 4) if case in ("choices", "sampled") else 1
        prompts = [prompt(rng) for _ in range(n)]
        body: dict = {"max_tokens": rng.randint(1, 12)}
        rf = {"type": "json_schema", "json_schema": {"name": "review", "schema": SCHEMA}}
        if case.startswith("chat"):
            path = "/v1/chat/completions"
            body["messages"] = [{"role": "system", "content": "You classify beer reviews."},
                                {"role": "user", "content": prompts[0]}]
        else:
            path = "/v1/completions"
            body["prompt"] = prompts[0] if n == 1 and rng.random() < 0.5 else prompts
        if case == "choices":
            body.update(choices=LABELS, max_tokens=8)
        elif case in ("json_schema", "chat_json"):
            body.update(response_format=rf, max_tokens=48)
        elif case == "sampled":
            body.update(temperature=0.8, top_p=0.9, top_k=50, seed=rng.randrange(2**31))
        elif case == "long":  # holds its pages for a while: with the small KV budget, requests preempt each other
            body.update(max_tokens=rng.randint(100, 400), ignore_eos=True)
        t0 = time.monotonic()
        resp = self.send(client, f"normal/{case}", {200}, "POST", path, json=body)
        if resp is None or resp.status_code != 200:
            return
        with self.lock:
            self.latencies.append(time.monotonic() - t0)
        try:
            problem = self.check_answer(case, n, resp.json(), body["max_tokens"])
        except (ValueError, KeyError, TypeError) as e:  # not JSON, or not the shape OpenAI clients read
            problem = f"unreadable answer ({type(e).__name__}: {e}): {resp.text[:200]}"
        if problem:
            with self.lock:
                self.wrong.append((f"normal/{case}", 200, problem))

    @staticmethod
    def check_answer(case: str, n: int, data: dict, body_max: int) -> str:
        choices = data.get("choices") or []
        if len(choices) != n:
            return f"{len(choices)} choices for {n} prompts"
        for c in choices:
            text = c["message"]["content"] if case.startswith("chat") else c["text"]
            if c["finish_reason"] not in ("stop", "length"):
                return f"finish_reason {c['finish_reason']!r}: {c.get('error')}"
            if case == "long" and (c["finish_reason"] != "length" or len(c["token_ids"]) != body_max):
                return f"{len(c['token_ids'])} tokens ({c['finish_reason']}) for max_tokens={body_max}, ignore_eos"
            if case == "choices" and text not in LABELS:
                return f"{text!r} is not one of the choices"
            if case in ("json_schema", "chat_json") and c["finish_reason"] == "stop":
                try:
                    value = json.loads(text)
                except ValueError:
                    return f"not JSON: {text!r}"
                if set(value) != {"sentiment", "stars"} or value["sentiment"] not in LABELS:
                    return f"does not follow the schema: {text!r}"
        return ""

    def raw(self, case: str, data: bytes, *, wait: float, reset: bool) -> None:
        """Send ``data`` on a fresh socket, wait, close before reading the answer."""
        try:
            sock = socket.create_connection((self.host, self.port), timeout=20)
        except OSError as e:
            with self.lock:
                self.client_errors[f"{case}: {type(e).__name__}"] += 1
            return
        try:
            if reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.sendall(data)
            time.sleep(wait)
        except OSError as e:
            with self.lock:
                self.client_errors[f"{case}: {type(e).__name__}"] += 1
        finally:
            sock.close()
        self.record(case, None, True)

    def request_bytes(self, body: bytes, content_length: int | None = None) -> bytes:
        head = (f"POST /v1/completions HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Authorization: Bearer {self.key}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body) if content_length is None else content_length}\r\n\r\n")
        return head.encode() + body

    def disconnect(self, rng: random.Random) -> None:
        import httpx
        pick = rng.random()
        long = {"prompt": prompt(rng), "max_tokens": rng.randint(200, 1500), "ignore_eos": True}
        if pick < 0.5:
            self.raw("disconnect/mid_generation", self.request_bytes(json.dumps(long).encode()),
                     wait=rng.uniform(0.05, 1.5), reset=rng.random() < 0.5)
        elif pick < 0.75:
            body = json.dumps(long).encode()
            self.raw("disconnect/mid_body", self.request_bytes(body[:rng.randrange(len(body))], len(body)),
                     wait=rng.uniform(0, 0.3), reset=rng.random() < 0.5)
        else:
            try:
                httpx.post(f"{self.url}/v1/completions", json=long, headers=self.headers(),
                           timeout=httpx.Timeout(10, read=0.3))
                self.record("disconnect/read_timeout", 200, True)  # finished within 0.3 s: an answer all the same
            except httpx.ReadTimeout:
                self.record("disconnect/read_timeout", None, True)
            except httpx.HTTPError as e:
                with self.lock:
                    self.client_errors[f"disconnect/read_timeout: {type(e).__name__}"] += 1

    def malformed(self, client, rng: random.Random) -> None:
        p = prompt(rng)
        cases = {  # name -> (statuses it may answer, path, raw body or JSON)
            "bad_json": ({400}, "/v1/completions", b'{"prompt": "hi", "max_tokens": '),
            "invalid_utf8": ({400}, "/v1/completions", b'{"prompt": "\xff\xfe"}'),
            "json_array": ({400}, "/v1/completions", b"[1, 2]"),
            "deep_nesting": ({400}, "/v1/completions", b'{"prompt": ' + b"[" * 20000 + b"]" * 20000 + b"}"),
            "wrong_types": ({400}, "/v1/completions", rng.choice([
                {"prompt": p, "max_tokens": "5"}, {"prompt": 5}, {"prompt": p, "stop": 5},
                {"prompt": p, "temperature": "hot"}, {"prompt": [1, "a"]}, {"prompt": p, "choices": [1]}])),
            "chat_wrong_types": ({400}, "/v1/chat/completions", rng.choice([
                {"messages": "hi"}, {"messages": [{"role": "user", "content": 5}]}, {"messages": []},
                {"messages": [{"role": "tool", "content": "x"}]}, {"messages": [{"content": "x"}]}])),
            "bad_values": ({400}, "/v1/completions", rng.choice([
                {"prompt": p, "max_tokens": 0}, {"prompt": p, "temperature": -1}, {"prompt": p, "top_p": 0},
                {"prompt": p, "n": 99}, {"prompt": p, "stream": "yes"}, {"prompt": ""}, {},
                {"prompt": p, "response_format": {"type": "xml"}}, {"prompt": p, "guided_regex": "("},
                {"prompt": p, "guided_json": {"type": "object", "properties": 5}}, {"prompt": [999999]}])),
            "over_context": ({400}, "/v1/completions", {"prompt": "word " * 3000, "max_tokens": 2}),
            "huge_prompt": ({400}, "/v1/completions", {"prompt": "x" * 200_000, "max_tokens": 2}),
            "chat_over_context": ({400}, "/v1/chat/completions",
                                  {"messages": [{"role": "user", "content": "word " * 3000}]}),
            "batch_with_bad_prompt": ({200}, "/v1/completions", {"prompt": [p, "word " * 3000, ""], "max_tokens": 2}),
            "unknown_fields": ({200}, "/v1/completions", {"prompt": p, "max_tokens": 2, "user": "soak",
                                                          "frobnicate": {"x": [1]}, "logit_bias": {}}),
            "extreme_sampling": ({200, 400}, "/v1/completions", dict({"prompt": p, "max_tokens": 3}, **rng.choice([
                {"temperature": 1e-40}, {"temperature": 1.0, "top_p": 1e-300}, {"temperature": 1.0, "seed": 2**70},
                {"temperature": 1.0, "top_k": 10**9}, {"stop_token_ids": [2**70]}]))),
            "unknown_path": ({404}, "/v1/embeddings", {"input": "x"}),
            "wrong_method": ({405}, "/v1/completions", None),
        }
        name = rng.choice(list(cases))
        expect, path, body = cases[name]
        if body is None:
            self.send(client, f"malformed/{name}", expect, "GET", path)
        elif isinstance(body, bytes):
            self.send(client, f"malformed/{name}", expect, "POST", path, content=body,
                      headers={"Content-Type": "application/json"})
        else:
            self.send(client, f"malformed/{name}", expect, "POST", path, json=body)

    def auth(self, plain, rng: random.Random) -> None:
        name, headers = rng.choice([("missing", {}), ("wrong_token", {"Authorization": "Bearer not-the-key"}),
                                    ("no_scheme", {"Authorization": self.key}),
                                    ("basic", {"Authorization": f"Basic {self.key}"}),
                                    ("empty_bearer", {"Authorization": "Bearer"}), ("health", {})])
        if name == "health":
            self.send(plain, "auth/health", {200}, "GET", "/health")
        else:
            path = rng.choice(["/v1/completions", "/v1/chat/completions", "/metrics", "/v1/models"])
            method = "GET" if path in ("/metrics", "/v1/models") else "POST"
            self.send(plain, f"auth/{name}", {401}, method, path, headers=headers,
                      json={"prompt": "hi"} if method == "POST" else None)

    def client(self, tid: int, box: dict, start: threading.Barrier) -> None:
        import httpx
        rng = random.Random(self.seed * 1000 + tid)
        with httpx.Client(base_url=self.url, headers=self.headers(), timeout=120) as client, \
                httpx.Client(base_url=self.url, timeout=60) as plain:
            start.wait()
            while time.monotonic() < box["deadline"]:
                pick = rng.random()
                try:
                    if pick < 0.5:
                        self.normal(client, rng)
                    elif pick < 0.7:
                        self.disconnect(rng)
                    elif pick < 0.9:
                        self.malformed(client, rng)
                    else:
                        self.auth(plain, rng)
                except Exception as e:  # noqa: BLE001 - a client's own failure is counted, and it goes on
                    with self.lock:
                        self.client_errors[f"client: {type(e).__name__}: {str(e)[:80]}"] += 1

    def run(self, seconds: float, pid: int, samples: list | None = None) -> float:
        """All clients for ``seconds``; every second (t, fds, rss MiB, running, waiting, KV pages used) into
        ``samples``; returns the time the clients took."""
        import httpx
        barrier = threading.Barrier(self.clients + 1)
        box = {"deadline": time.monotonic() + seconds + 60}
        threads = [threading.Thread(target=self.client, args=(i, box, barrier), daemon=True)
                   for i in range(self.clients)]
        for t in threads:
            t.start()
        barrier.wait()
        started = time.monotonic()
        box["deadline"] = started + seconds
        with httpx.Client(base_url=self.url, headers=self.headers(), timeout=60) as watcher:
            while any(t.is_alive() for t in threads):
                if samples is not None:
                    fds, rss = sample(pid)
                    m = metrics(watcher)
                    samples.append((round(time.monotonic() - started, 1), fds, round(rss, 1),
                                    int(m["llm_sql_requests_running"]), int(m["llm_sql_requests_waiting"]),
                                    int(m["llm_sql_kv_pages_used"])))
                time.sleep(1)
        return time.monotonic() - started


def wait_idle(client, timeout: float = 60) -> dict:
    """/metrics once nothing runs or waits (or after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        m = metrics(client)
        if (m["llm_sql_requests_running"] == 0 and m["llm_sql_requests_waiting"] == 0) or time.monotonic() > deadline:
            return m
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=90)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=8, help="seconds of load before the idle baseline")
    parser.add_argument("--kv-cache-memory", default="4MB",
                        help="the server's KV budget (default 4MB: under two full-context requests, so long ones preempt)")
    parser.add_argument("--quick", action="store_true", help="10 s of load, no warm-up (the smoke test)")
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warmup = 10, 0

    import httpx

    from engine_backend.testing import make_tiny_model

    model = checkpoint_dir("engine_soak_llama")
    if not (model / "config.json").is_file():
        make_tiny_model(model, arch="llama")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    server_log = out / f"{NAME}.server.log"
    key = secrets.token_urlsafe(24)
    server_stderr = open(server_log, "w")  # noqa: SIM115 - the child writes it until the end
    child, url = start_serve(model, key, "--kv-cache-memory", args.kv_cache_memory, stderr=server_stderr)
    pid = child.pid
    log(f"llm-sql serve up on {url} (pid {pid})")
    settle = 1 if args.quick else 3  # seconds for uvicorn to close what the last clients left
    try:
        soak = Soak(url, key, args.clients, args.seed)
        with httpx.Client(base_url=url, headers=soak.headers(), timeout=120) as admin:
            probe = {"prompt": f"{PREFIX}{REVIEWS[0]}\nSentiment:", "max_tokens": 12}
            reference = admin.post("/v1/completions", json=probe).json()["choices"][0]["token_ids"]
            cold_fds, cold_rss = sample(pid)
            if args.warmup > 0:
                soak.run(args.warmup, pid)  # fills what the server reuses (threads, allocator pools, the prefix cache)
            idle_metrics = wait_idle(admin)
            time.sleep(settle)
            idle_fds, idle_rss = sample(pid)
            for c in (soak.kinds, soak.statuses, soak.client_errors):
                c.clear()
            soak.latencies.clear()
            warmup_wrong, soak.wrong, warmup_errors, soak.server_errors = soak.wrong, [], soak.server_errors, []
            log(f"server pid {pid}: {cold_fds} fds cold, {idle_fds} fds / {idle_rss:.1f} MiB after warm-up, "
                f"{int(idle_metrics['llm_sql_kv_pages_used'])} KV pages held; {args.clients} clients for "
                f"{args.seconds:g} s")
            samples: list = []
            t0 = time.monotonic()
            elapsed = soak.run(args.seconds, pid, samples)
            after_metrics = wait_idle(admin)
            time.sleep(settle)
            after_fds, after_rss = sample(pid)
            samples.append((round(time.monotonic() - t0, 1), after_fds, round(after_rss, 1), *(int(after_metrics[k])
                            for k in ("llm_sql_requests_running", "llm_sql_requests_waiting", "llm_sql_kv_pages_used"))))
            final = admin.post("/v1/completions", json=probe)
            final_ok = final.status_code == 200 and final.json()["choices"][0]["token_ids"] == reference
            chosen = admin.post("/v1/completions", json=dict(probe, choices=LABELS))
            final_ok = final_ok and chosen.status_code == 200 and chosen.json()["choices"][0]["text"] in LABELS
    finally:
        stop_serve(child)
        server_stderr.close()

    logged = server_log.read_text(errors="replace")
    tracebacks = logged.count("Traceback (most recent call last)")
    loaded = [s for s in samples[:-1] if s[0] >= 0.25 * args.seconds] or samples
    growth = loaded[-1][2] - loaded[0][2] if len(loaded) > 1 else 0.0
    requests = sum(soak.kinds.values())
    lat = sorted(soak.latencies)
    delta = {k.removeprefix("llm_sql_"): int(after_metrics[k] - idle_metrics[k]) for k in GAUGES
             if k.endswith("_total") and k != "llm_sql_kv_pages_total" and k in after_metrics}
    kv_idle = {k: int(idle_metrics[k]) for k in ("llm_sql_kv_pages_used", "llm_sql_requests_running",
                                                 "llm_sql_requests_waiting")}
    kv_after = {k: int(after_metrics[k]) for k in kv_idle}
    by_kind = Counter()
    for case, n in soak.kinds.items():
        by_kind[case.split("/")[0]] += n
    result = {
        "clients": args.clients, "seconds": round(elapsed, 1), "requests": requests,
        "requests_per_second": round(requests / elapsed, 1), "by_kind": dict(sorted(by_kind.items())),
        "by_case": dict(sorted(soak.kinds.items())), "statuses": dict(sorted(soak.statuses.items())),
        "server_errors": len(soak.server_errors) + len(warmup_errors),
        "server_error_samples": (warmup_errors + soak.server_errors)[:5],
        "wrong_answers": len(soak.wrong) + len(warmup_wrong), "wrong_answer_samples": (warmup_wrong + soak.wrong)[:5],
        "client_side_transport_errors": dict(soak.client_errors),
        "normal_latency_s": {"p50": round(lat[len(lat) // 2], 3) if lat else None,
                             "p99": round(lat[int(len(lat) * 0.99)], 3) if lat else None,
                             "max": round(lat[-1], 3) if lat else None},
        "kv": {"pages_total": int(after_metrics["llm_sql_kv_pages_total"]),
               "idle_before": kv_idle, "idle_after": kv_after,
               "max_pages_used_under_load": max(s[5] for s in samples),
               "max_running": max(s[3] for s in samples), "max_waiting": max(s[4] for s in samples),
               "pages_cached_after": int(after_metrics.get("llm_sql_kv_pages_cached", 0)),
               "engine_counters_during_soak": delta},
        "fds": {"cold": cold_fds, "idle_before": idle_fds, "max_under_load": max(s[1] for s in samples),
                "idle_after": after_fds},
        "rss_mib": {"cold": round(cold_rss, 1), "idle_before": round(idle_rss, 1),
                    "at_25pct": loaded[0][2], "end_of_load": loaded[-1][2], "max": max(s[2] for s in samples),
                    "idle_after": round(after_rss, 1), "growth_after_warmup": round(growth, 1)},
        "final_request_ok": final_ok, "server_tracebacks": tracebacks, "server_log": str(server_log),
        "kv_cache_memory": args.kv_cache_memory, "samples": samples,
    }
    checks = {"no 5xx": result["server_errors"] == 0 and tracebacks == 0,
              "answers as asked": result["wrong_answers"] == 0,
              "no leaked KV page": kv_after == kv_idle and kv_after["llm_sql_kv_pages_used"] == 0,
              "no leaked fd": after_fds <= idle_fds + FD_SLACK,
              "memory flat": growth < MEMORY_GROWTH_LIMIT_MIB,
              "no hang or dropped connection": not soak.client_errors,  # timeouts (120 s), resets, refusals
              "serves after": final_ok,
              "no engine error": delta.get("engine_errors_total", 0) == 0,
              # every request the engine took finished, was aborted or was rejected: none lost on the way
              "requests accounted for": delta.get("requests_submitted_total") == sum(
                  delta.get(k, 0) for k in ("requests_finished_total", "requests_aborted_total",
                                            "requests_rejected_total"))}
    result["checks"] = checks
    result["passed"] = all(checks.values())
    write_json(result, args.out, NAME)
    print_table(["kind", "requests"], sorted(by_kind.items()), title="requests by kind")
    print_table(["case", "requests"], sorted(soak.kinds.items()), title="requests by case")
    print_table(["status", "count"], sorted(soak.statuses.items()), title="answers")
    print_table(["figure", "value"], [
        ["requests/s", result["requests_per_second"]],
        ["normal latency p50 / p99 / max s", " / ".join(str(v) for v in result["normal_latency_s"].values())],
        ["KV pages held idle before / max / after",
         (f"{kv_idle['llm_sql_kv_pages_used']} / {result['kv']['max_pages_used_under_load']} / "
          f"{kv_after['llm_sql_kv_pages_used']} (of {result['kv']['pages_total']})")],
        ["running / waiting at most", f"{result['kv']['max_running']} / {result['kv']['max_waiting']}"],
        ["aborted / preempted during soak", f"{delta.get('requests_aborted_total')} / {delta.get('preemptions_total')}"],
        ["fds idle before / max / after", f"{idle_fds} / {result['fds']['max_under_load']} / {after_fds}"],
        ["RSS MiB idle / 25% / end / max / after",
         (f"{result['rss_mib']['idle_before']} / {loaded[0][2]} / {loaded[-1][2]} / {result['rss_mib']['max']} / "
          f"{result['rss_mib']['idle_after']}")]]
        + [[name, "ok" if ok else "FAILED"] for name, ok in checks.items()], title="soak")

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ts = [s[0] for s in samples]
    ax.plot(ts, [s[2] for s in samples], label="server RSS (MiB)")
    ax.set_xlabel("seconds")
    ax.set_ylabel("MiB")
    ax2 = ax.twinx()
    ax2.plot(ts, [s[1] for s in samples], color="tab:orange", label="open fds")
    ax2.plot(ts, [s[5] for s in samples], color="tab:green", label="KV pages held")
    ax2.plot(ts, [s[3] for s in samples], color="tab:red", label="requests running")
    ax2.set_ylabel("count")
    ax.set_title(f"Engine server soak: {args.clients} clients, {requests} requests, {result['server_errors']} 5xx")
    fig.legend(loc="lower right", fontsize=7)
    save_png(fig, NAME, args.out)
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()

"""Run the embedded ``LLMEngine`` in this process."""
from __future__ import annotations

import threading
import time
from typing import Any

from engine_backend.backends.base import Backend, GenerationRequest, GenerationResult, _Totals
from engine_backend.openai_shapes import token_text


def result_from_output(out: Any, tokenizer: Any = None) -> GenerationResult:
    """``RequestOutput`` -> ``GenerationResult`` (shared with anything that runs the engine); ``tokenizer`` names
    the tokens of logprobs, which cover the answer only (not a reasoning block)."""
    failed = out.finish_reason == "error"
    logprobs = None
    if out.logprobs is not None and tokenizer is not None and not failed:
        _, answer = out.answer_logprobs()
        logprobs = [(e.logprob, {token_text(tokenizer, t): lp for t, lp in e.top}) for e in answer]
    return GenerationResult(
        text=None if failed else out.text,
        token_ids=list(out.token_ids),
        finish_reason=out.finish_reason,
        error=(out.error or "request failed") if failed else out.error,
        prompt_tokens=len(out.prompt_token_ids),
        cached_prompt_tokens=out.num_cached_tokens or 0,
        completion_tokens=len(out.token_ids),
        logprobs=logprobs,
        reasoning=out.reasoning,
        reasoning_tokens=out.num_reasoning_tokens,
    )


def simulate_steps(token_lists: list[list[int]], cached: list[int], generated: list[int], block_size: int | None,
                   max_num_seqs: int, max_num_batched_tokens: int) -> int:
    """How many scheduler steps the engine takes for these requests, sent in this order: ``cached[i]`` prompt
    tokens of request ``i`` served by the prefix cache, ``generated[i]`` tokens generated (at least one).
    ``block_size``: the prefix cache's (None: no prefix cache, nothing is cached).

    The scheduler's rules (``engine_backend.scheduler``) without its memory: each step first gives every
    running request its next chunk of prompt (or its one decoding token) within ``max_num_batched_tokens``,
    then admits waiting requests in order while tokens and ``max_num_seqs`` slots are left, except that a
    request whose cached prefix an earlier request is still computing waits for it to be published (and so
    does everyone behind it). A request's first token comes with its last prompt chunk. No preemption, no
    speculation: what ``BatchHistory`` and ``llm_sql.estimate`` count steps with, the same way on both sides."""
    from collections import deque

    n = len(token_lists)
    owner: dict[tuple, tuple[int, int]] = {}  # (parent block id, block tokens) -> (block id, request computing it)
    dep: list[tuple[int, int] | None] = [None] * n  # (request, tokens it must have computed) before admission
    for i, toks in enumerate(token_lists if block_size else ()):
        hit_blocks = min(cached[i], max(0, len(toks) - 1)) // block_size
        parent = -1
        for k in range(len(toks) // block_size):
            key = (parent, tuple(toks[k * block_size:(k + 1) * block_size]))
            got = owner.get(key)
            if got is None:
                got = owner[key] = (len(owner), i)
            if k == hit_blocks - 1 and got[1] != i:
                dep[i] = (got[1], hit_blocks * block_size)
            parent = got[0]
    length = [max(1, len(t)) for t in token_lists]
    computed = [0] * n
    produced = [0] * n
    done = [False] * n
    waiting, running = deque(range(n)), []
    steps = 0
    while waiting or running:
        budget = max_num_batched_tokens
        batch: list[tuple[int, int]] = []
        for i in running:
            if budget <= 0:
                break
            k = min(length[i] - computed[i], budget) if computed[i] < length[i] else 1
            batch.append((i, k))
            budget -= k
        if len(batch) == len(running):
            while waiting and budget > 0 and len(running) < max_num_seqs:
                i = waiting[0]
                d = dep[i]
                if d is not None and not done[d[0]] and computed[d[0]] < d[1]:
                    break  # its prefix is still being computed by an earlier request
                waiting.popleft()
                computed[i] = min(cached[i], length[i] - 1)
                k = min(length[i] - computed[i], budget)
                running.append(i)
                batch.append((i, k))
                budget -= k
        if not batch:  # cannot happen with the rules above; never loop forever
            break
        for i, k in batch:
            if computed[i] < length[i]:
                computed[i] += k
                if computed[i] >= length[i]:
                    produced[i] += 1
            else:
                produced[i] += 1
            if produced[i] >= max(1, generated[i]):
                done[i] = True
        running = [i for i in running if not done[i]]
        steps += 1
    return steps


# -- facts of an engine, shared by everything that runs one (this backend, the server's AsyncLLMEngine) -------------
def engine_block_size(engine: Any) -> int | None:
    """The engine's prefix-cache block size; None when its prefix cache is off."""
    kv = engine.kv
    return int(kv.block_size) if kv.enable_prefix_caching else None


def engine_steps(engine: Any, token_lists: list[list[int]], cached: list[int], generated: list[int]) -> int:
    """``simulate_steps`` of these requests (prompt token ids, cached prompt tokens, generated tokens, in the order
    admitted) with this engine's block size and scheduler limits: how its batch history counts steps."""
    s = engine.scheduler
    return simulate_steps(token_lists, cached, generated, engine_block_size(engine), s.max_num_seqs,
                          s.max_num_batched_tokens)


def engine_cached_prefix_blocks(engine: Any, token_lists: list[list[int]]) -> list[int]:
    """For each prompt (token ids), how many of its leading full blocks the engine's prefix cache could serve
    now (every layer type, device or host tier; at least one token left to compute), as ``match_prefix``
    would find them. Nothing is allocated, attached or touched; no request is made. Not thread-safe: call it
    where the engine runs (under its lock, on its thread)."""
    kv = engine.kv
    tiers = [a for m in kv.managers.values() for a in (m.device, m.host) if a is not None]
    if not kv.enable_prefix_caching or not any(a.cached for a in tiers):  # nothing to find: skip the hashing
        return [0] * len(token_lists)
    return [kv.cached_blocks(list(ids)) for ids in token_lists]


class EmbeddedBackend(Backend):
    """``EmbeddedBackend(model=DIR, device="cpu", ...)``: keyword arguments go to ``LLMEngine``.

    The engine is not thread-safe, so calls from several threads (DuckDB runs UDF chunks
    in parallel) take turns; each call is one ordered batch.
    """

    name = "embedded"

    def __init__(self, model: str | None = None, *, engine: Any = None, **engine_kwargs: Any):
        if engine is None:
            if model is None:
                raise TypeError("EmbeddedBackend needs model=DIR (or an engine=LLMEngine)")
            from engine_backend.engine import LLMEngine

            engine = LLMEngine(model=model, **engine_kwargs)
        self.engine = engine
        self._lock = threading.Lock()
        self._totals = _Totals()

    def generate(self, requests: list[GenerationRequest], progress: bool = False) -> list[GenerationResult]:
        if not requests:
            return []
        prompts = [r.prompt for r in requests]
        params = [r.params for r in requests]
        with self._lock:
            start = time.perf_counter()
            outputs = self.engine.generate(prompts, params, use_tqdm=progress)
            seconds = time.perf_counter() - start
            results = [result_from_output(o, self.engine.tokenizer) for o in outputs]
            ran = [o for o in outputs if o.prompt_token_ids]  # a rejected prompt never reached the scheduler
            steps = self.steps_for([o.prompt_token_ids for o in ran], [o.num_cached_tokens or 0 for o in ran],
                                   [len(o.token_ids) for o in ran])
            self._totals.add(results, seconds, requests, steps)
        return results

    def steps_for(self, token_lists: list[list[int]], cached: list[int], generated: list[int]) -> int:
        """``simulate_steps`` with this engine's block size and scheduler limits (``engine_steps``)."""
        return engine_steps(self.engine, token_lists, cached, generated)

    def prefix_block_size(self) -> int | None:
        """The engine's prefix-cache block size; None when its prefix cache is off."""
        return engine_block_size(self.engine)

    def check(self, params: Any) -> None:
        if params.reasoning:
            from engine_backend.reasoning import require_format

            require_format(self.engine.tokenizer, self.engine.model_name)

    def cached_prefix_blocks(self, token_lists: list[list[int]]) -> list[int]:
        """Per prompt, the leading full blocks the engine's prefix cache could serve now
        (``engine_cached_prefix_blocks``); nothing is allocated."""
        with self._lock:
            return engine_cached_prefix_blocks(self.engine, token_lists)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            stats = self._totals.as_dict()
            stats["engine"] = self.engine.stats()
        return stats

    def close(self) -> None:
        # Drop the engine's tensors; a closed backend cannot be used again.
        close = getattr(self.engine, "close", None)
        if callable(close):
            close()

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
        answer = out.logprobs[len(out.logprobs) - out.num_answer_tokens:] if out.num_answer_tokens else []
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
            results = [result_from_output(o, self.engine.tokenizer) for o in outputs]
            self._totals.add(results, time.perf_counter() - start)
        return results

    def check(self, params: Any) -> None:
        if params.reasoning:
            from engine_backend.reasoning import require_format

            require_format(self.engine.tokenizer, self.engine.model_name)

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

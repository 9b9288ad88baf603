"""vLLM's offline ``LLM`` on a CUDA machine (the fast path where a GPU and vLLM exist).

Only constructed when ``import vllm`` works and CUDA is available; otherwise the
constructor raises ``BackendError`` saying which is missing, so callers can fall back.
"""
from __future__ import annotations

import threading
import time
from typing import Any

from engine_backend.backends.base import Backend, BackendError, GenerationRequest, GenerationResult, _Totals
from engine_backend.sampling_params import SamplingParams


def _unavailable_reason() -> str | None:
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install failing on import
        return f"vllm cannot be imported ({type(exc).__name__}: {exc}); install it on a CUDA machine"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device is available (torch.cuda.is_available() is False)"
    return None


def _choice_kwargs(choices: list[str]) -> dict[str, Any]:
    """Constrained choice: ``structured_outputs`` in vLLM >= 0.10.2, ``guided_decoding`` before."""
    try:
        from vllm.sampling_params import StructuredOutputsParams

        return {"structured_outputs": StructuredOutputsParams(choice=list(choices))}
    except ImportError:
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(choice=list(choices))}


def to_vllm_params(p: SamplingParams) -> Any:
    import vllm

    kwargs: dict[str, Any] = dict(max_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p,
                                  top_k=p.top_k if p.top_k > 0 else -1, seed=p.seed, stop=list(p.stop) or None,
                                  stop_token_ids=list(p.stop_token_ids) or None, ignore_eos=p.ignore_eos)
    if p.choices:
        kwargs.update(_choice_kwargs(p.choices))
    if p.reasoning or p.logprobs is not None or p.logit_bias:  # not mapped yet: refuse rather than ignore
        raise ValueError("the vllm backend does not take reasoning, logprobs or logit_bias yet; use the embedded "
                         "engine or llm-sql serve")
    kwargs.update(presence_penalty=p.presence_penalty, frequency_penalty=p.frequency_penalty)
    return vllm.SamplingParams(**kwargs)


class VLLMBackend(Backend):
    """``VLLMBackend(model=DIR, **llm_kwargs)``: keyword arguments go to ``vllm.LLM``."""

    name = "vllm"

    def __init__(self, model: str, **llm_kwargs: Any):
        reason = _unavailable_reason()
        if reason:
            raise BackendError(f"the vllm backend is unavailable: {reason}")
        import vllm

        llm_kwargs.setdefault("enable_prefix_caching", True)  # the whole point of the row order
        self.llm = vllm.LLM(model=model, **llm_kwargs)
        self._lock = threading.Lock()
        self._totals = _Totals()

    def generate(self, requests: list[GenerationRequest], progress: bool = False) -> list[GenerationResult]:
        if not requests:
            return []
        prompts = [{"prompt": r.prompt} if isinstance(r.prompt, str) else {"prompt_token_ids": list(r.prompt)}
                   for r in requests]
        results: list[GenerationResult | None] = [None] * len(requests)
        with self._lock:
            start = time.perf_counter()
            # vLLM validates a whole call at once: run the bad prompts alone so they fail alone.
            try:
                outs = self.llm.generate(prompts, [to_vllm_params(r.params) for r in requests], use_tqdm=progress)
            except ValueError:
                outs = None
            if outs is not None:
                results = [self._result(o) for o in outs]
            else:
                for i, (prompt, r) in enumerate(zip(prompts, requests)):
                    try:
                        (out,) = self.llm.generate([prompt], [to_vllm_params(r.params)], use_tqdm=False)
                        results[i] = self._result(out)
                    except ValueError as exc:
                        results[i] = GenerationResult.failed(str(exc))
            self._totals.add(results, time.perf_counter() - start)
        return results

    @staticmethod
    def _result(out: Any) -> GenerationResult:
        comp = out.outputs[0]
        return GenerationResult(text=comp.text, token_ids=list(comp.token_ids),
                                finish_reason=comp.finish_reason or "stop", error=None,
                                prompt_tokens=len(out.prompt_token_ids or []),
                                cached_prompt_tokens=getattr(out, "num_cached_tokens", None) or 0,
                                completion_tokens=len(comp.token_ids))

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return self._totals.as_dict()

    def close(self) -> None:
        self.llm = None  # vLLM frees the GPU when the LLM object is collected

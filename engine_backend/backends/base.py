"""What every backend offers the UDF layer: ordered batches in, one result per request out."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from engine_backend.sampling_params import SamplingParams


class BackendError(RuntimeError):
    """The backend cannot serve at all (unreachable, misconfigured, unavailable here).

    A single bad request is not a ``BackendError``: it comes back as a result with
    ``finish_reason="error"`` so that the other rows of a query survive.
    """


@dataclass
class GenerationRequest:
    prompt: str | list[int]
    params: SamplingParams


@dataclass
class GenerationResult:
    text: str | None  # None when the request failed
    token_ids: list[int]
    finish_reason: str  # "stop" | "length" | "error" | "abort"
    error: str | None
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int
    # per answer token when asked for (SamplingParams.logprobs): (its logprob, {alternative's text: logprob}),
    # text-keyed so every backend can say it (OpenAI-style servers name tokens by their text)
    logprobs: list[tuple[float, dict[str, float]]] | None = None
    reasoning: str | None = None  # a reasoning request's block (``text`` is the answer after it)
    reasoning_tokens: int = 0  # of completion_tokens, those inside the block

    @property
    def ok(self) -> bool:
        return self.finish_reason not in ("error", "abort")

    @classmethod
    def failed(cls, error: str, prompt_tokens: int = 0) -> "GenerationResult":
        return cls(text=None, token_ids=[], finish_reason="error", error=error, prompt_tokens=prompt_tokens,
                   cached_prompt_tokens=0, completion_tokens=0)


class Backend(ABC):
    """Runs ordered batches of requests. Subclasses must keep the input order in the output."""

    name = "backend"

    @abstractmethod
    def generate(self, requests: list[GenerationRequest], progress: bool = False) -> list[GenerationResult]:
        """One result per request, in input order; the batch is submitted in that order."""

    def check(self, params: SamplingParams) -> None:
        """Raise ``ValueError`` for parameters the model can never serve (asking it to reason when it has no
        reasoning mode): a query fails at once instead of every row failing alike. Per-request faults still
        come back as failed results."""

    def stats(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Totals:
    """Running token and request counts shared by the backends' ``stats()``."""

    def __init__(self) -> None:
        self.requests = self.errors = 0
        self.prompt_tokens = self.cached_prompt_tokens = self.completion_tokens = 0
        self.seconds = 0.0

    def add(self, results: list[GenerationResult], seconds: float) -> None:
        self.requests += len(results)
        self.errors += sum(not r.ok for r in results)
        self.prompt_tokens += sum(r.prompt_tokens for r in results)
        self.cached_prompt_tokens += sum(r.cached_prompt_tokens for r in results)
        self.completion_tokens += sum(r.completion_tokens for r in results)
        self.seconds += seconds

    def as_dict(self) -> dict[str, Any]:
        hit = self.cached_prompt_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
        return {"requests": self.requests, "errors": self.errors, "prompt_tokens": self.prompt_tokens,
                "cached_prompt_tokens": self.cached_prompt_tokens, "prefix_hit_rate": hit,
                "generated_tokens": self.completion_tokens, "seconds": self.seconds,
                "generated_tokens_per_s": self.completion_tokens / self.seconds if self.seconds else 0.0}

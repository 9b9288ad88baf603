"""What every backend offers the UDF layer: ordered batches in, one result per request out."""
from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import asdict, dataclass
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

    def history(self) -> "BatchHistory | None":
        """What this backend measured on its past batches (``BatchHistory``), for ``llm_sql.explain``'s
        estimates; None when it keeps none."""
        return getattr(getattr(self, "_totals", None), "history", None)

    # What llm_sql.explain asks of a backend that can see its engine (the embedded one, our engine server);
    # None where it cannot say.
    def prefix_block_size(self) -> int | None:
        """The prefix cache's block size; None when it is off or unknown."""
        return None

    def cached_prefix_blocks(self, token_lists: list[list[int]]) -> list[int] | None:
        """Per prompt (token ids), the leading full blocks the prefix cache holds now."""
        return None

    def steps_for(self, token_lists: list[list[int]], cached: list[int], generated: list[int]) -> int | None:
        """Engine steps these requests take (``embedded.simulate_steps`` under the engine's limits)."""
        return None

    def close(self) -> None:
        pass

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def params_kind(params: SamplingParams) -> str:
    """The kind of a request, as far as how many tokens it generates goes: its output constraint (free text,
    choices, a JSON schema, a regex) and its bounds. ``BatchHistory`` keeps generated tokens per kind."""
    def digest(value: Any) -> str:
        return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]

    if params.choices is not None:
        kind = f"choices:{digest(params.choices)}"
    elif params.json_schema is not None:
        kind = f"json:{digest(_schema_value(params.json_schema))}"
    elif params.regex is not None:
        kind = f"regex:{digest(params.regex)}"
    else:
        kind = "text"
    kind += f" max_tokens={params.max_tokens}"
    if params.stop or params.stop_token_ids:
        kind += f" stop:{digest([params.stop, params.stop_token_ids])}"
    if params.ignore_eos:
        kind += " ignore_eos"
    if params.reasoning:
        kind += f" reasoning={params.max_reasoning_tokens}"
    return kind


def _schema_value(schema: Any) -> Any:
    """A JSON schema as the object it names: ``SamplingParams.json_schema`` may be the dict or its JSON text (the
    same schema either way; an OpenAI-compatible request carries the object, so a server sees the dict)."""
    if isinstance(schema, str):
        try:
            return json.loads(schema)
        except ValueError:  # not JSON: the engine refuses it; as a kind it is its text
            return schema
    return schema


@dataclass
class BatchRecord:
    """One ``generate`` call as the backend measured it."""

    requests: int
    uncached_prompt_tokens: int  # prompt tokens computed (not served by the prefix cache)
    generated_tokens: int
    seconds: float
    steps: int | None = None  # engine steps, where the backend can say (the embedded engine's schedule)


class BatchHistory:
    """A small record of a backend's past batches (the last ``size``) and, per kind of request
    (``params_kind``), how many tokens its requests generated: what ``llm_sql.estimate`` fits its time model
    and its expected output lengths on.

    ``to_json`` / ``from_json``: the form ``GET /v1/llm_sql/cost`` of our server carries it in
    (``{"batches": [{BatchRecord's fields}, ...], "generated": {kind: [requests, tokens]}}``)."""

    MAX_KINDS = 256
    SIZE = 64

    def __init__(self, size: int = SIZE) -> None:
        self.batches: deque[BatchRecord] = deque(maxlen=size)
        self.generated: dict[str, list[int]] = {}  # kind -> [requests that succeeded, tokens they generated]

    def add(self, results: list[GenerationResult], seconds: float,
            requests: list[GenerationRequest] | None = None, steps: int | None = None) -> None:
        if not results:
            return
        self.batches.append(BatchRecord(
            requests=len(results),
            uncached_prompt_tokens=sum(max(0, r.prompt_tokens - r.cached_prompt_tokens) for r in results),
            generated_tokens=sum(r.completion_tokens for r in results), seconds=float(seconds), steps=steps))
        if requests is None or len(requests) != len(results):
            return
        for req, res in zip(requests, results):
            self.count_generated(req.params, res)

    def count_generated(self, params: SamplingParams, result: GenerationResult) -> None:
        """Count one finished request's generated tokens under its kind; a failed or aborted one says nothing
        about how long answers of its kind are, and is not counted."""
        if not result.ok:
            return
        kind = params_kind(params)
        entry = self.generated.pop(kind, None) or [0, 0]  # re-inserted last: the newest kinds are kept
        entry[0] += 1
        entry[1] += result.completion_tokens
        self.generated[kind] = entry
        while len(self.generated) > self.MAX_KINDS:
            del self.generated[next(iter(self.generated))]

    def generated_per_request(self, kind: str) -> tuple[float, int] | None:
        """(mean generated tokens per request, requests measured) for ``kind``, or None if never seen."""
        entry = self.generated.get(kind)
        return (entry[1] / entry[0], entry[0]) if entry and entry[0] else None

    def to_json(self) -> dict[str, Any]:
        return {"batches": [asdict(b) for b in self.batches],
                "generated": {k: list(v) for k, v in self.generated.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any], size: int | None = None) -> "BatchHistory":
        """The history ``to_json`` wrote, keeping ``size`` batches (default: ``SIZE``, or all of ``data``'s if it
        has more). Raises ``ValueError`` for anything else."""
        try:
            records = [BatchRecord(requests=int(b["requests"]), uncached_prompt_tokens=int(b["uncached_prompt_tokens"]),
                                   generated_tokens=int(b["generated_tokens"]), seconds=float(b["seconds"]),
                                   steps=None if b.get("steps") is None else int(b["steps"]))
                       for b in data.get("batches") or []]
            generated = {str(k): [int(v[0]), int(v[1])] for k, v in (data.get("generated") or {}).items()}
        except (TypeError, KeyError, IndexError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a batch history: {exc!r}") from None
        history = cls(size if size is not None else max(cls.SIZE, len(records)))
        history.batches.extend(records)
        history.generated = generated
        return history


class _Totals:
    """Running token and request counts shared by the backends' ``stats()``, and the batch history."""

    def __init__(self) -> None:
        self.requests = self.errors = 0
        self.prompt_tokens = self.cached_prompt_tokens = self.completion_tokens = 0
        self.seconds = 0.0
        self.history = BatchHistory()

    def add(self, results: list[GenerationResult], seconds: float,
            requests: list[GenerationRequest] | None = None, steps: int | None = None) -> None:
        self.history.add(results, seconds, requests, steps)
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

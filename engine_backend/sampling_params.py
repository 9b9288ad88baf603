"""What a caller asks of one generation: length, randomness, stops and constraints."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_LOGPROBS = 20  # OpenAI's limit for top_logprobs


@dataclass
class SamplingParams:
    """Sampling settings for one request.

    Greedy (``temperature=0``) is the default: SQL answers should be repeatable.
    ``choices`` constrains the output to be exactly one of the given strings
    (labels, yes/no); generation then stops as soon as a choice is complete.
    ``json_schema`` (a dict or JSON text) or ``regex`` constrains it to JSON that
    validates against the schema, or to text the expression matches
    (``engine_backend.grammar``); it stops when the output is complete or at
    ``max_tokens``. At most one of the three.

    ``logprobs`` asks for each generated token's log-probability and the ``logprobs`` most likely
    alternatives (0: the chosen token's only), from the model's own distribution: before
    temperature, penalties, bias and constraints, as vLLM reports them.
    ``reasoning=True`` makes a reasoning model think first (``engine_backend.reasoning``): a text prompt is
    rendered as one user turn by the checkpoint's chat template with its thinking switch on (token ids are
    taken as rendered), the block is cut at ``max_reasoning_tokens`` (None: no budget) and returned apart;
    constraints, stops and ``max_tokens`` apply to the answer after it.
    ``presence_penalty`` / ``frequency_penalty`` (OpenAI's, in [-2, 2]) lower the logits of tokens
    already generated, once / per occurrence; ``logit_bias`` adds to chosen token ids' logits.
    """

    max_tokens: int = 16
    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    choices: list[str] | None = None
    json_schema: Any = None
    regex: str | None = None
    logprobs: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    reasoning: bool = False
    max_reasoning_tokens: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad setting."""
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not isinstance(self.temperature, (int, float)) or not (0.0 <= self.temperature <= 100.0):
            raise ValueError(f"temperature must be a number in [0, 100], got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be a non-negative integer (0 disables it), got {self.top_k!r}")
        if not isinstance(self.top_p, (int, float)) or not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or not -2**63 <= self.seed < 2**64):
            raise ValueError(f"seed must be a 64-bit integer or None, got {self.seed!r}")
        if any(not isinstance(s, str) or s == "" for s in self.stop):
            raise ValueError("stop must be a list of non-empty strings")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise ValueError("stop_token_ids must be non-negative integers")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or isinstance(self.logprobs, bool)
                                          or not 0 <= self.logprobs <= MAX_LOGPROBS):
            raise ValueError(f"logprobs must be an integer in [0, {MAX_LOGPROBS}] or None, got {self.logprobs!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not -2.0 <= value <= 2.0:
                raise ValueError(f"{name} must be a number in [-2, 2], got {value!r}")
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, dict) or any(
                    not isinstance(t, int) or isinstance(t, bool) or t < 0 or isinstance(b, bool)
                    or not isinstance(b, (int, float)) or not -100 <= b <= 100 for t, b in self.logit_bias.items()):
                raise ValueError("logit_bias must map token ids (non-negative integers) to numbers in [-100, 100]")
        if not isinstance(self.reasoning, bool):
            raise ValueError(f"reasoning must be a boolean, got {self.reasoning!r}")
        if self.max_reasoning_tokens is not None and (not isinstance(self.max_reasoning_tokens, int)
                                                      or isinstance(self.max_reasoning_tokens, bool)
                                                      or self.max_reasoning_tokens < 0):
            raise ValueError(f"max_reasoning_tokens must be a non-negative integer or None, "
                             f"got {self.max_reasoning_tokens!r}")
        given = [n for n in ("choices", "json_schema", "regex") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one output constraint, got {' and '.join(given)}")
        if self.json_schema is not None and not isinstance(self.json_schema, (dict, str)):
            raise ValueError(f"json_schema must be a dict or JSON text, got {type(self.json_schema).__name__}")
        if self.regex is not None and (not isinstance(self.regex, str) or not self.regex):
            raise ValueError("regex must be a non-empty string")
        if self.choices is not None:
            if not isinstance(self.choices, (list, tuple)) or not self.choices:
                raise ValueError("choices must be a non-empty list of strings")
            if any(not isinstance(c, str) or c == "" for c in self.choices):
                raise ValueError("choices must be non-empty strings")
            if len(set(self.choices)) != len(self.choices):
                raise ValueError(f"choices contain duplicates: {list(self.choices)!r}")
            self.choices = list(self.choices)

    @property
    def adjusts_logits(self) -> bool:
        """Whether penalties or a bias change the logits before sampling."""
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

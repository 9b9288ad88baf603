"""The contract between the SQL layers (DuckDB rewriter, Spark) and the LLM batch path.

A query's LLM call becomes an ``LLMCall``; the rows it must answer (the distinct input
tuples, or a UDF's chunk) go to ``udf.batch.evaluate`` with an ``EvalSettings``; the
answers come back in input order as an ``EvalOutput``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from udf.registry import REGISTRY  # noqa: E402 - the one list of LLM functions

FUNCTIONS = tuple(REGISTRY)


@dataclass(frozen=True)
class LLMCall:
    function: str  # one of FUNCTIONS
    instruction: str | None  # llm / llm_filter / llm_score: the instruction or a preset name
    labels: tuple[str, ...] | None  # llm_classify: the allowed outputs
    field_names: tuple[str, ...]  # one name per field argument, in the order written in SQL
    options: tuple[tuple[str, Any], ...] = ()  # the trailing options struct, validated, sorted by key


@dataclass
class EvalSettings:
    """Session switches (``llm_sql.register(..., **options)``); each can be turned off for comparisons."""

    dedup: bool = True
    reorder: bool = True
    result_cache: bool = True
    on_error: str = "null"  # "null": NULL plus a recorded reason; "raise": the first failure raises
    progress: bool = True  # a progress bar on stderr for long runs
    defaults: dict[str, Any] = field(default_factory=dict)  # session-level function options (max_tokens, ...)


@dataclass
class StageStats:
    rows_in: int = 0
    distinct_inputs: int = 0
    llm_calls: int = 0  # requests actually sent to the backend
    cache_hits: int = 0  # answered by the persistent result cache
    null_inputs: int = 0  # all fields NULL: NULL without a call
    errors: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    generated_tokens: int = 0
    solve_seconds: float = 0.0  # reordering
    llm_seconds: float = 0.0
    field_order: tuple[str, ...] = ()  # the most common field order chosen
    # where rows went (udf.routing): rows answered per model, rows answered with reasoning, tokens spent thinking,
    # and the generated tokens and LLM seconds saved against asking every row the costliest way
    rows_by_model: dict[str, int] = field(default_factory=dict)
    rows_reasoned: int = 0
    reasoning_tokens: int = 0
    generated_tokens_saved: float = 0.0
    llm_seconds_saved: float = 0.0
    routing: dict[str, Any] = field(default_factory=dict)  # the router's or cascade's plan and threshold


@dataclass
class EvalOutput:
    values: list[Any]  # one per input row, in input order; None = SQL NULL
    errors: list[str | None]  # the reason a value is NULL because of a failure
    stats: StageStats
    confidence: list[float | None] | None = None  # per row, when asked for (udf.confidence)


class ResultCache(Protocol):
    """Persistent answers keyed by model identity, sampling parameters and the full prompt."""

    def get_many(self, keys: list[str]) -> dict[str, str]: ...

    def put_many(self, items: dict[str, str]) -> None: ...

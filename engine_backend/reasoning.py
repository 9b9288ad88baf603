"""Reasoning ("thinking") models: the switch in the checkpoint's own chat template, and the thinking budget.

A reasoning model writes a reasoning block before its answer. How a prompt turns it on or off, and how the
block is marked, belongs to the model family and is read from its chat template:

| family | the template | on | off | block |
|---|---|---|---|---|
| ``qwen3`` | reads ``enable_thinking`` | ``enable_thinking=True`` | ``enable_thinking=False`` (the template writes an empty block) | ``<think>`` ... ``</think>`` |
| ``think`` | writes ``<think>`` itself (DeepSeek-R1 style) | as rendered | an empty ``<think>\\n\\n</think>\\n\\n`` block is added after the generation prompt | ``<think>`` ... ``</think>`` |
| ``harmony`` | reads ``reasoning_effort`` (gpt-oss style channels) | ``reasoning_effort="high"`` | ``reasoning_effort="low"`` | up to ``<\\|channel\\|>final<\\|message\\|>`` |

A template with none of these has no reasoning mode (``reasoning_format`` returns None) and asking it to reason is
an error that says so.

The engine keeps a ``ReasoningState`` per request that reasons. The output starts inside the block; the block ends
where the model writes the end marker. ``max_reasoning_tokens`` is the budget: when the block has that many tokens
and is still open, the engine appends the end marker itself, so the answer follows. Output constraints (choices,
grammars), stop strings and ``max_tokens`` apply to the answer only, and ``RequestOutput.text`` is the answer
while ``RequestOutput.reasoning`` is the block's text.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ReasoningFormat:
    family: str  # "qwen3" | "think" | "harmony"
    start: str  # what opens the block (stripped from the reasoning text)
    end: str  # what closes it: the answer follows

    def render(self, tokenizer: Any, messages: list[dict[str, Any]], thinking: bool, **kwargs: Any) -> str:
        """The chat rendered by the model's template with its thinking switch on or off."""
        if self.family == "qwen3":
            return tokenizer.apply_chat_template(messages, True, enable_thinking=thinking, **kwargs)
        if self.family == "harmony":
            return tokenizer.apply_chat_template(messages, True, reasoning_effort="high" if thinking else "low",
                                                 **kwargs)
        text = tokenizer.apply_chat_template(messages, True, **kwargs)
        if thinking:
            return text
        # R1-style templates open the block in the generation prompt; an empty block tells the model to answer.
        opened = text.rstrip().endswith(self.start)
        return text + ("\n" + self.end + "\n\n" if opened else self.start + "\n\n" + self.end + "\n\n")

    def split(self, text: str) -> tuple[str, str]:
        """(reasoning, answer) of an output that started inside the block."""
        reasoning, found, answer = text.partition(self.end)
        if not found:
            return text.strip().removeprefix(self.start).strip(), ""
        return reasoning.strip().removeprefix(self.start).strip(), answer


def reasoning_format(tokenizer: Any) -> ReasoningFormat | None:
    """The family's switch and markers, read from the chat template; None for a model with no reasoning mode."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if "enable_thinking" in template:
        return ReasoningFormat("qwen3", "<think>", "</think>")
    if "reasoning_effort" in template and "<|channel|>" in template:
        return ReasoningFormat("harmony", "<|channel|>analysis<|message|>", "<|channel|>final<|message|>")
    if "<think>" in template:
        return ReasoningFormat("think", "<think>", "</think>")
    return None


def require_format(tokenizer: Any, model_name: str) -> ReasoningFormat:
    fmt = reasoning_format(tokenizer)
    if fmt is None:
        raise ValueError(f"model {model_name!r} has no reasoning mode: its chat template has no thinking switch "
                         "(Qwen3's enable_thinking, a <think> block, or reasoning_effort); use reasoning 'off'")
    return fmt


@dataclass
class ReasoningState:
    """One request's reasoning block: open until the end marker is written (by the model, or by the engine when
    the budget is spent). ``answer_start``: output tokens before the answer, once the block is closed."""

    end_bytes: bytes
    close_ids: list[int]  # the end marker's tokens, appended when the budget is spent
    budget: int | None
    num_tokens: int = 0  # tokens the model wrote inside the block (the appended end marker not included)
    answer_start: int | None = None
    _tail: bytearray = field(default_factory=bytearray)

    @classmethod
    def start(cls, fmt: ReasoningFormat, tokenizer: Any, budget: int | None) -> "ReasoningState":
        return cls(fmt.end.encode(), tokenizer.encode(fmt.end, add_special_tokens=False), budget)

    @property
    def thinking(self) -> bool:
        return self.answer_start is None

    def observe(self, token_bytes: bytes, num_output_tokens: int) -> list[int]:
        """Note one token written inside the block; returns the tokens to append to close it (budget spent)."""
        self.num_tokens += 1
        self._tail += token_bytes
        if self.end_bytes in self._tail:
            self.answer_start = num_output_tokens
            return []
        del self._tail[:max(0, len(self._tail) - len(self.end_bytes) + 1)]  # only a marker's start may stay
        if self.budget is not None and self.num_tokens >= self.budget:
            self.answer_start = num_output_tokens + len(self.close_ids)
            return list(self.close_ids)
        return []

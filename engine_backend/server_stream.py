"""Server-sent events for ``stream=true``: OpenAI's chunk protocol over a ``BatchStream``.

Each choice streams on its own: chunks carry its index, a text piece (``TextPieces``: only ever
extending what was sent) and the logprobs of the tokens that arrived, then one chunk with its
finish reason. Chat opens each choice with the assistant role. With ``include_usage`` a last
chunk has no choices and the usage of the whole request; the stream ends with ``data: [DONE]``.
A choice the engine rejects ends with ``finish_reason: "error"`` and an ``error`` string; an
engine failure is an ``error`` event, as OpenAI's clients read it. Whatever ends the response
early (the client went away) aborts the requests still running, so their KV pages are freed.
"""
from __future__ import annotations

import json
import time
from typing import Any, AsyncIterator

from engine_backend.openai_shapes import TextPieces, chat_logprobs, completion_logprobs, usage


class ChunkWriter:
    """Turns one request's stream events into SSE lines (``chat``: chat.completion.chunk, else text_completion)."""

    def __init__(self, tokenizer: Any, *, chat: bool, model: str, response_id: str, params: list,
                 include_usage: bool, n: int = 1, reasoning: Any = None):
        self.tokenizer, self.chat, self.model, self.id = tokenizer, chat, model, response_id
        self.created = int(time.time())
        self.include_usage, self.n = include_usage, n
        # a reasoning request's block streams as reasoning_content (chat: in the delta), apart from the answer
        self.pieces = [TextPieces(tokenizer, p.stop, reasoning if p.reasoning else None) for p in params]
        self.want_logprobs = [p.logprobs is not None for p in params]
        self.outputs: list[Any] = [None] * len(params)

    def _line(self, body: dict) -> str:
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def _chunk(self, choices: list[dict], **extra: Any) -> str:
        body = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices, **extra}
        if self.include_usage and "usage" not in body:
            body["usage"] = None
        return self._line(body)

    def _choice(self, index: int, text: str | None, token_ids: list[int], entries: list | None,
                finish_reason: str | None = None, error: str | None = None, before: list[int] = (),
                thought: str = "") -> dict:
        logprobs = None
        if self.want_logprobs[index] and entries is not None:
            if self.chat:
                logprobs = chat_logprobs(self.tokenizer, token_ids, entries)
            else:
                logprobs = completion_logprobs(self.tokenizer, token_ids, entries, before)
        if self.chat:
            delta = {} if text is None else {"content": text}
            if thought:
                delta["reasoning_content"] = thought
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish_reason}
            if thought:  # as the whole completion's choice carries it
                choice["reasoning_content"] = thought
        if error is not None:
            choice["error"] = error
        return choice

    def opening(self) -> list[str]:
        """Chat names the speaker before the first token; completions start with text."""
        if not self.chat:
            return []
        return [self._chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None}]) for i in range(len(self.pieces))]

    def tokens(self, index: int, token_ids: list[int], entries: list | None) -> str | None:
        if self.pieces[index].format is not None:
            entries = None  # a reasoning request's logprobs are the answer's: they come with its last chunk
        before = list(self.pieces[index].token_ids)
        thought, piece = self.pieces[index].add(token_ids)
        if not piece and not thought and not (self.want_logprobs[index] and entries):
            return None  # held back, and nothing else to say
        return self._chunk([self._choice(index, piece, token_ids, entries, before=before, thought=thought)])

    def done(self, index: int, out: Any) -> str:
        self.outputs[index] = out
        pieces = self.pieces[index]
        before = list(pieces.token_ids)
        rest = list(out.token_ids[len(before):])  # tokens of the last step: never reported as progress
        pieces.token_ids += rest
        entries = out.logprobs[len(out.logprobs) - len(rest):] if out.logprobs is not None else None
        tokens = rest
        if pieces.format is not None and out.logprobs is not None:  # the answer's, as the whole response has them
            tokens, entries = out.answer_logprobs()
            before = list(out.token_ids[:len(out.token_ids) - len(tokens)])
        if out.finish_reason == "error":
            return self._chunk([self._choice(index, None, [], None, "error", out.error or "request failed")])
        thought, piece = pieces.finish(out.text, out.reasoning)
        return self._chunk([self._choice(index, piece or None, tokens, entries, out.finish_reason, before=before,
                                         thought=thought)])

    def closing(self) -> list[str]:
        lines = []
        if self.include_usage:
            lines.append(self._chunk([], usage=usage(self.outputs, self.n)))
        return lines + ["data: [DONE]\n\n"]

    def failure(self, error: BaseException) -> str:
        return self._line({"error": {"message": str(error), "type": "server_error", "param": None, "code": None}})


async def sse(writer: ChunkWriter, events: AsyncIterator[tuple], stream: Any) -> AsyncIterator[str]:
    """The response body: every event as chunks, then the closing lines; aborts what is left if cut short."""
    try:
        for line in writer.opening():
            yield line
        async for event in events:
            if event[0] == "tokens":
                line = writer.tokens(*event[1:])
                if line is not None:
                    yield line
            elif event[0] == "done":
                yield writer.done(*event[1:])
            else:
                yield writer.failure(event[1])
                return
        for line in writer.closing():
            yield line
    finally:
        stream.abort()  # a no-op once every request finished

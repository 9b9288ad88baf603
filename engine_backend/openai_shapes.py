"""The OpenAI response shapes the server answers in: usage, logprobs, and text that streams in pieces.

Pure functions of engine outputs (``RequestOutput``, ``TokenLogprob``) and the tokenizer, shared by the
plain and the streamed responses so both say the same thing.
"""
from __future__ import annotations

from typing import Any


def usage(outputs: list[Any], n: int = 1) -> dict:
    """Token counts of a response; with ``n`` choices per prompt (consecutive outputs), each prompt counts once."""
    prompt = sum(len(o.prompt_token_ids) for o in outputs[::n])
    completion = sum(len(o.token_ids) for o in outputs)
    cached = sum(o.num_cached_tokens or 0 for o in outputs[::n])
    body = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}
    if any(o.reasoning is not None for o in outputs):  # OpenAI's name for the tokens spent thinking
        body["completion_tokens_details"] = {"reasoning_tokens": sum(o.num_reasoning_tokens for o in outputs)}
    return body


def token_bytes(tokenizer: Any, token_id: int) -> bytes:
    """What one token adds to the text; a special token (EOS) is its name, as OpenAI-style servers show it."""
    raw = tokenizer.decode_token_bytes(token_id)
    return raw if raw else (tokenizer.id_to_token(token_id) or "").encode()


def token_text(tokenizer: Any, token_id: int) -> str:
    raw = token_bytes(tokenizer, token_id)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # part of a character: OpenAI spells it bytes:\xNN
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def completion_logprobs(tokenizer: Any, token_ids: list[int], entries: list, before: list[int] = ()) -> dict:
    """``/v1/completions``' shape: parallel lists of tokens, their logprobs, the top alternatives as
    {token: logprob} (the chosen token alone when none were asked for) and where each token starts in the
    text (``before``: the tokens generated ahead of these, when streaming)."""
    ids = list(before)
    offsets = []
    for t in token_ids:
        offsets.append(len(tokenizer.decode(ids)) if ids else 0)
        ids.append(t)
    tops = [{token_text(tokenizer, t): lp for t, lp in (e.top or [(tid, e.logprob)])}
            for tid, e in zip(token_ids, entries)]
    return {"tokens": [token_text(tokenizer, t) for t in token_ids], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": tops, "text_offset": offsets}


def chat_logprobs(tokenizer: Any, token_ids: list[int], entries: list) -> dict:
    """``/v1/chat/completions``' shape: one entry per token with its bytes and its top alternatives."""
    def one(tid: int, lp: float) -> dict:
        return {"token": token_text(tokenizer, tid), "logprob": lp, "bytes": list(token_bytes(tokenizer, tid))}

    return {"content": [{**one(tid, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]}
                        for tid, e in zip(token_ids, entries)], "refusal": None}


class TextPieces:
    """A request's text as pieces that only ever extend what was sent, from its growing token list.

    The tokens are decoded whole each time (a byte-level token may be half a character, and a
    tokenizer may join pieces), and three things are held back: an unfinished UTF-8 character, the
    text from a stop string on (the engine cuts the answer there), and any tail that could still
    become a stop string. With a reasoning format (``engine_backend.reasoning``) the text before the
    end marker is the reasoning, sent apart, and only the rest is the answer. ``finish`` sends the
    rest of the engine's final answer and reasoning.
    """

    def __init__(self, tokenizer: Any, stop: list[str], reasoning: Any = None):
        self.tokenizer, self.stop, self.format = tokenizer, stop, reasoning
        self.token_ids: list[int] = []
        self.sent = self.sent_reasoning = ""

    def add(self, token_ids: list[int]) -> tuple[str, str]:
        """(reasoning piece, answer piece) the new tokens make sendable."""
        self.token_ids += token_ids
        text = self.tokenizer.decode(self.token_ids).rstrip("\ufffd")
        thought = ""
        if self.format is not None:
            block, closed, text = text.partition(self.format.end)
            if not closed:  # still thinking: hold back what may be the start of the end marker
                return self._send_reasoning(block[:len(block) - _overlap(block, self.format.end)]), ""
            thought = self._send_reasoning(block)
        end = len(text)
        for s in self.stop:
            hit = text.find(s)
            end = min(end, hit if hit >= 0 else len(text) - _overlap(text, s))
        return thought, self._send(text[:end])

    def finish(self, final_text: str, final_reasoning: str | None = None) -> tuple[str, str]:
        thought = self._send_reasoning(final_reasoning, final=True) if final_reasoning else ""
        return thought, self._send(final_text)

    def _send(self, text: str) -> str:
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""  # nothing new, or the decoding changed what was sent, which cannot be taken back
        piece, self.sent = text[len(self.sent):], text
        return piece

    def _send_reasoning(self, block: str, final: bool = False) -> str:
        # as the engine reports it: the opening marker and surrounding whitespace dropped (trailing whitespace
        # waits: it may be the end)
        text = block if final else block.strip().removeprefix(self.format.start).strip()
        if len(text) <= len(self.sent_reasoning) or not text.startswith(self.sent_reasoning):
            return ""
        piece, self.sent_reasoning = text[len(self.sent_reasoning):], text
        return piece


def _overlap(text: str, stop: str) -> int:
    """Length of the longest tail of ``text`` that is a proper start of ``stop``."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0

"""One request as the scheduler sees it: tokens, progress, pages and sampling state."""
from __future__ import annotations

import enum
import hashlib
from array import array
from dataclasses import dataclass

from .sampling_params import SamplingParams


def block_keys(token_ids: list[int], block_size: int, num_blocks: int, known: list[bytes] | None = None
               ) -> list[bytes]:
    """Chained keys of the first ``num_blocks`` full blocks of ``token_ids``: a block's key names its whole prefix.
    ``known``: the keys already made for the leading blocks, extended in place.

    ``sha256(parent key + the block's token ids)``: one engine serves every client holding the token, so a
    key must not be forgeable; Python's ``hash`` of int tuples is not seeded and collisions can be built,
    which would hand one request another's KV."""
    keys = [] if known is None else known
    for b in range(len(keys), num_blocks):
        block = array("q", token_ids[b * block_size:(b + 1) * block_size]).tobytes()
        keys.append(hashlib.sha256((keys[b - 1] if b else b"") + block).digest())
    return keys[:num_blocks] if num_blocks < len(keys) else keys


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" | "length" | "error" | "abort"
    num_cached_tokens: int = 0
    error: str | None = None
    logprobs: list | None = None  # one ``engine_backend.logprobs.TokenLogprob`` per token, if asked for
    reasoning: str | None = None  # a reasoning request's block (``text`` is the answer after it)
    num_reasoning_tokens: int = 0
    num_answer_tokens: int = 0  # the last tokens of ``token_ids``: the answer after any reasoning block

    def answer_logprobs(self) -> tuple[list[int], list | None]:
        """The answer's tokens (after any reasoning block) and their logprob entries (None if not asked for):
        what OpenAI-style APIs report as the content's logprobs."""
        n = self.num_answer_tokens
        tokens = list(self.token_ids[len(self.token_ids) - n:]) if n else []
        if self.logprobs is None:
            return tokens, None
        return tokens, (self.logprobs[len(self.logprobs) - n:] if n else [])


class Sequence:
    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, arrival: int):
        self.request_id = request_id
        self.token_ids: list[int] = list(prompt_token_ids)
        self.prompt_len = len(prompt_token_ids)
        self.params = params
        self.arrival = arrival
        self.status = SequenceStatus.WAITING
        self.num_computed = 0  # tokens whose K/V are in the cache
        self.block_tables: dict[str, list[int]] = {}  # layer type -> small pages per block
        self.released_upto: dict[str, int] = {}  # sliding types: blocks already dropped
        self.num_registered_blocks = 0  # blocks published to the prefix cache
        self._block_keys: list = []
        self.pending_keys: list = []  # block keys this request is computing (see Scheduler)
        self.num_cached_tokens = 0  # prefix-cache hit at first admission
        self.admitted = False
        self.host_tables: dict[str, list[int]] | None = None  # swapped out: host page per block, per type
        self.streamed = False  # running from the host tier: block_tables name host pages (Pie's expansion)
        self.num_host_hit_tokens = 0  # of the last prefix match, tokens copied back from the host tier
        self.exclusive = False  # restarted alone from an empty cache: nothing is admitted beside it
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.stop_text_len: int | None = None  # where a stop string cut the text
        self.generator = None  # torch.Generator for seeded sampling
        self.logprobs: list | None = None  # TokenLogprob per output token, when params.logprobs is set
        self.reasoning = None  # engine_backend.reasoning.ReasoningState of a request that thinks first
        self.constraint_node = None  # the output constraint's state (choice-trie node, grammar guide)
        self.draft_token_ids: list[int] = []  # speculative tokens this step verifies (not yet part of the output)
        self.draft_proposer: str | None = None  # who proposed them (``engine_backend.spec``)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len:]

    @property
    def answer_token_ids(self) -> list[int]:
        """The output after a reasoning block (all of it without one; nothing while the block is open)."""
        r = self.reasoning
        if r is None:
            return self.output_token_ids
        return [] if r.answer_start is None else self.token_ids[self.prompt_len + r.answer_start:]

    @property
    def num_answer_tokens(self) -> int:
        r = self.reasoning
        if r is None:
            return self.num_output_tokens
        return 0 if r.answer_start is None else self.num_output_tokens - r.answer_start

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.prompt_len

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed

    @property
    def swapped(self) -> bool:
        return self.host_tables is not None

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED

    def forget_keys_after(self, num_blocks: int) -> None:
        """Drop the cached keys of blocks from ``num_blocks`` on: their tokens are about to change."""
        del self._block_keys[num_blocks:]

    def block_keys(self, block_size: int, num_blocks: int) -> list[bytes]:
        """``block_keys`` of this sequence's tokens, the keys already made kept for its next call."""
        return block_keys(self.token_ids, block_size, num_blocks, self._block_keys)

"""Where speculative tokens come from: three proposers behind one interface.

A proposer guesses how a request goes on. ``propose(seqs, ks)`` returns at most ``ks[i]`` tokens for
request i (fewer, or none, when it has no guess); ``on_tokens(seq, tokens)`` tells it what a request
actually appended; ``finish(seq)`` that a request is gone. ``free`` proposers cost next to nothing, so
the speculator asks them every step and learns their acceptance even while they are not used.

- ``PromptLookupProposer`` ("ngram"): the request's last 3, 2 or 1 tokens are looked up in its own
  prompt and output, and the tokens that followed their latest occurrence are proposed. Extraction
  copies its input, so this is right most of the time there.
- ``BatchLookupProposer`` ("batch"): what other requests answered. A trie of every request's output
  with counts proposes the most frequent continuation of the request's output so far (row 200 of a
  classification proposes what rows 1-199 answered, from the first token on); where the output has
  left every other one, its last 3 or 2 tokens are looked up in the other requests' outputs.
- ``DraftModelProposer`` ("draft"): a smaller checkpoint with the same vocabulary, run greedily by the
  engine's own code (its own ``LLMEngine``: pool, prefix cache, runner) on a mirror of each request.
"""
from __future__ import annotations

import time
from array import array
from collections import OrderedDict

from ..sampling_params import SamplingParams
from ..scheduler import ScheduledBatch
from ..sequence import Sequence

NGRAM_SIZES = (3, 2, 1)  # longest match first


class Proposer:
    name = "proposer"
    free = True  # proposing costs next to nothing: asked every step, for shadow acceptance trials

    def propose(self, seqs: list[Sequence], ks: list[int]) -> list[list[int]]:
        raise NotImplementedError

    def on_tokens(self, seq: Sequence, tokens: list[int]) -> None:
        """``tokens`` were appended to ``seq`` (verified output)."""

    def finish(self, seq: Sequence) -> None:
        """``seq`` finished or was aborted: forget it."""


def prompt_lookup(tokens: list[int], k: int, sizes=NGRAM_SIZES) -> list[int]:
    """Up to ``k`` tokens that followed the latest earlier occurrence of the longest suffix n-gram of ``tokens``.

    The search runs in C over the tokens' bytes (``bytes.rfind``, realigned to whole tokens), so a request that
    decodes only a token or two never pays for indexing its prompt."""
    data = array("i", tokens).tobytes()
    width = 4  # bytes per token in array("i")
    for n in sizes:
        if len(tokens) <= n:
            continue
        pattern, end = data[-n * width:], (len(tokens) - 1) * width  # a match must end before the last token
        while True:
            at = data.rfind(pattern, 0, end)
            if at < 0:
                break
            if at % width == 0:
                start = at // width + n
                return tokens[start:start + k]
            end = at + len(pattern) - 1  # a match across token boundaries: look further left
    return []


class PromptLookupProposer(Proposer):
    """Prompt lookup: continue the request's suffix as its own prompt or output went on before."""

    name = "ngram"

    def propose(self, seqs, ks):
        return [prompt_lookup(seq.token_ids, k) if k > 0 else [] for seq, k in zip(seqs, ks)]


class _TrieNode:
    __slots__ = ("children", "count", "best")

    def __init__(self):
        self.children: dict[int, _TrieNode] = {}
        self.count = 0  # outputs that passed through this node
        self.best: int | None = None  # the most frequent next token


class BatchLookupProposer(Proposer):
    """Batch lookup: what the other requests of the batch answered (an output trie, then an n-gram index)."""

    name = "batch"
    MAX_TRIE_NODES = 200_000  # then the trie starts over (long free-text outputs would grow it without end)
    MAX_FINISHED_OUTPUTS = 4096  # finished outputs kept for the n-gram lookup

    def __init__(self):
        self.root = _TrieNode()
        self._nodes = 1
        self._where: dict[str, _TrieNode | None] = {}  # request -> the trie node of its output so far (None: off it)
        self._outputs: OrderedDict[str, list[int]] = OrderedDict()
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._grams: dict[tuple, tuple[str, int]] = {}  # output n-gram -> (request, position after it)

    def propose(self, seqs, ks):
        out = []
        for seq, k in zip(seqs, ks):
            proposal: list[int] = []
            node = self._where.get(seq.request_id, self.root)
            while node is not None and len(proposal) < k and node.best is not None:
                proposal.append(node.best)
                node = node.children[node.best]
            if not proposal and k > 0:
                proposal = self._from_other_outputs(seq, k)
            out.append(proposal)
        return out

    def _from_other_outputs(self, seq, k):
        own = seq.output_token_ids
        for n in (3, 2):
            if len(own) >= n:
                hit = self._grams.get(tuple(own[-n:]))
                if hit is not None and hit[0] != seq.request_id and hit[0] in self._outputs:
                    return self._outputs[hit[0]][hit[1]:hit[1] + k]
        return []

    def on_tokens(self, seq, tokens):
        rid = seq.request_id
        node = self._where.get(rid, self.root)
        for t in tokens:
            if node is None:
                break
            child = node.children.get(t)
            if child is None:
                if self._nodes >= self.MAX_TRIE_NODES:
                    self.root, self._nodes, self._where = _TrieNode(), 1, {}
                    node = None  # this request is off the new trie; later requests start on it
                    break
                child = node.children[t] = _TrieNode()
                self._nodes += 1
            child.count += 1
            if node.best is None or child.count > node.children[node.best].count:
                node.best = t
            node = child
        self._where[rid] = node
        output = self._outputs.setdefault(rid, [])
        start = len(output)
        output.extend(tokens)
        for end in range(max(start, 2), len(output)):
            for n in (3, 2):
                if end >= n:
                    self._grams[tuple(output[end - n:end])] = (rid, end)

    def finish(self, seq):
        rid = seq.request_id
        self._where.pop(rid, None)
        if rid in self._outputs:
            self._finished[rid] = None
            while len(self._finished) > self.MAX_FINISHED_OUTPUTS:
                old, _ = self._finished.popitem(last=False)
                self._outputs.pop(old, None)


class DraftModelProposer(Proposer):
    """A smaller model with the target's vocabulary proposes greedily, on its own KV cache."""

    name = "draft"
    free = False

    def __init__(self, model_dir, target, kv_cache_memory=None):
        from ..engine import LLMEngine  # the draft is an engine of its own; imported late (engine imports spec)

        self.engine = LLMEngine(model_dir, device=target.device.type, dtype=target.dtype,
                                kv_cache_memory=kv_cache_memory, block_size=target.kv.block_size,
                                max_num_seqs=target.scheduler.max_num_seqs, max_model_len=target.max_model_len,
                                swap_space=0, preemption="recompute")
        if not self.engine.tokenizer.same_vocabulary(target.tokenizer):
            raise ValueError(f"the draft model {model_dir} has another vocabulary than the target "
                             f"{target.model_path}: a draft must share the target's tokenizer")
        self._mirrors: dict[str, Sequence] = {}
        self._params = SamplingParams(max_tokens=1)
        self.last_seconds = 0.0
        self.last_steps = 0
        self.last_tokens = 0

    def propose(self, seqs, ks):
        t0 = time.perf_counter()
        kv = self.engine.kv
        proposals = {seq.request_id: [] for seq in seqs}
        active = []
        for seq, k in zip(seqs, ks):
            if 0 < k and len(seq.token_ids) + k <= self.engine.max_model_len:  # within the draft's own context
                active.append((self._mirror(seq), k))
        steps = tokens = 0
        while True:
            batch = ScheduledBatch()
            for m, k in active:
                if m.request_id in self._mirrors and len(proposals[m.request_id]) < k:
                    n = kv.max_chunk(m.num_computed, m.num_uncomputed)
                    if kv.allocate(m, n):
                        batch.seqs.append(m)
                        batch.num_new_tokens.append(n)
                    else:  # the draft's pool is full of other mirrors: no proposal for this one
                        self._drop(m.request_id)
            if not batch:
                break
            sampled, logits = self.engine.runner.run(batch)
            steps += 1
            tokens += sum(batch.num_new_tokens)
            for m, n in zip(batch.seqs, batch.num_new_tokens):
                m.num_computed += n
            for m, t in zip(sampled, logits.argmax(dim=-1).tolist() if sampled else []):  # none: chunks of prompts
                m.token_ids.append(t)
                proposals[m.request_id].append(t)
        self.last_seconds, self.last_steps, self.last_tokens = time.perf_counter() - t0, steps, tokens
        return [proposals[seq.request_id] for seq in seqs]

    def _mirror(self, seq: Sequence) -> Sequence:
        """The draft's copy of ``seq``, its tokens set to the verified ones, its KV rolled back to where they
        agree (at most to the last token, whose logits are needed)."""
        kv = self.engine.kv
        m = self._mirrors.get(seq.request_id)
        if m is None:
            m = self._mirrors[seq.request_id] = Sequence(seq.request_id, seq.token_ids, self._params, 0)
            kv.match_prefix(m)
            return m
        limit = min(m.num_computed, len(seq.token_ids) - 1)
        agree = next((i for i in range(limit) if m.token_ids[i] != seq.token_ids[i]), limit)
        kv.truncate(m, agree)
        m.forget_keys_after(agree // kv.block_size)
        m.token_ids = list(seq.token_ids)
        kv.commit(m)  # publish the verified blocks; sliding layers release what they will not read
        return m

    def _drop(self, request_id: str) -> None:
        m = self._mirrors.pop(request_id, None)
        if m is not None:
            self.engine.kv.free(m)

    def finish(self, seq):
        self._drop(seq.request_id)

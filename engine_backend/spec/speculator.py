"""The engine's speculative decoding: before each step, which requests verify which proposed tokens.

``LLMEngine(speculative={"method": "ngram" | "batch" | "draft" | [several], "draft_model": DIR,
"num_speculative_tokens": "auto" | k})``. Each step, for every running request that is decoding
(not prefilling, not streamed from the host tier, not under a grammar), the proposers guess its
next tokens; the request verifies ``k`` of them in the same forward pass as its one real token
(``seq.draft_token_ids``; the scheduler, runner and sampler do the rest). With a fixed k, every
request takes up to k tokens from its best proposer; with ``"auto"``, SmartSpec chooses k per
request (0 included) for the highest expected goodput (``goodput.py``), and the proposer per request
by its acceptance estimate.

Budget: draft tokens never take the step's token budget from prompts waiting to be prefilled (the
estimate of that work is subtracted first), so speculation does not delay admissions.
"""
from __future__ import annotations

import json
from collections import Counter

from .goodput import AcceptanceEstimator, BatchTimeModel, DraftTimeModel, StepShape, choose_lengths
from .proposers import BatchLookupProposer, DraftModelProposer, PromptLookupProposer, Proposer

METHODS = ("ngram", "batch", "draft")
OPTIONS = ("method", "num_speculative_tokens", "max_speculative_tokens", "draft_model", "draft_kv_cache_memory")
MAX_SPECULATIVE_TOKENS = 8  # "auto"'s default cap per request and step
EXPLORE_EVERY = 16  # "auto" asks the proposers at least this often, even while no draft could pay
LIMIT = 64  # the most a fixed or capped k may be


def parse_options(speculative) -> dict | None:
    """The speculative option as a dict, checked; None: off. ``"ngram"`` is short for ``{"method": "ngram"}``, and
    JSON text (``'{"method": "batch"}'``, as the CLI and ``register`` pass it) is read as the dict it spells."""
    if speculative is None or speculative is False:
        return None
    if isinstance(speculative, str) and speculative.lstrip()[:1] in ("{", "["):
        try:
            speculative = json.loads(speculative)
        except ValueError as exc:
            raise ValueError(f"speculative is not valid JSON: {exc}") from None
    if isinstance(speculative, (str, Proposer)) or (isinstance(speculative, list)):
        speculative = {"method": speculative}
    if not isinstance(speculative, dict):
        raise ValueError(f"speculative must be a dict like {{'method': 'ngram'}}, got {speculative!r}")
    unknown = sorted(set(speculative) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown speculative option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    methods = speculative.get("method", "ngram")
    methods = methods if isinstance(methods, list) else [methods]
    if not methods:
        raise ValueError("speculative method list is empty")
    for m in methods:
        if not isinstance(m, Proposer) and m not in METHODS:
            raise ValueError(f"speculative method must be one of {', '.join(METHODS)} (or a Proposer), got {m!r}")
    names = [m if isinstance(m, str) else m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"speculative methods repeat: {names}")
    if "draft" in methods and not speculative.get("draft_model"):
        raise ValueError("speculative method 'draft' needs draft_model: a checkpoint directory with the same tokenizer")
    k = speculative.get("num_speculative_tokens", "auto")
    if k != "auto" and (not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= LIMIT):
        raise ValueError(f"num_speculative_tokens must be 'auto' or an integer in [0, {LIMIT}], got {k!r}")
    cap = speculative.get("max_speculative_tokens", MAX_SPECULATIVE_TOKENS)
    if not isinstance(cap, int) or isinstance(cap, bool) or not 1 <= cap <= LIMIT:
        raise ValueError(f"max_speculative_tokens must be an integer in [1, {LIMIT}], got {cap!r}")
    return {**speculative, "method": methods, "num_speculative_tokens": k, "max_speculative_tokens": cap}


class Speculator:
    def __init__(self, options: dict, engine):
        self.engine = engine
        self.auto = options["num_speculative_tokens"] == "auto"
        self.k_limit = options["max_speculative_tokens"] if self.auto else options["num_speculative_tokens"]
        self.proposers: list[Proposer] = []
        for m in options["method"]:
            if isinstance(m, Proposer):
                self.proposers.append(m)
            elif m == "ngram":
                self.proposers.append(PromptLookupProposer())
            elif m == "batch":
                self.proposers.append(BatchLookupProposer())
            else:
                self.proposers.append(DraftModelProposer(options["draft_model"], engine,
                                                         options.get("draft_kv_cache_memory")))
        self.by_name = {p.name: p for p in self.proposers}
        self.acceptance = AcceptanceEstimator()
        self.step_time = BatchTimeModel()
        self.draft_time = DraftTimeModel()
        self._shadow: dict[str, dict[str, int]] = {}  # request -> free proposer -> its first proposed token
        self._candidates: dict[str, str | None] = {}  # this step's decoding requests -> the proposer chosen
        self._plans = 0  # steps with decoding requests
        self._stats = {name: Counter() for name in self.by_name}
        self.request_steps = 0  # decoding request-steps that could speculate
        self.proposed = self.accepted = 0

    # ---- before a step ------------------------------------------------------------------------------
    def plan(self, scheduler) -> None:
        """Give the decoding requests of the next step their drafts (``seq.draft_token_ids``)."""
        for s in scheduler.running:  # drafts a step did not reach are stale now
            s.draft_token_ids, s.draft_proposer = [], None
        self._shadow, self._candidates = {}, {}
        seqs = [s for s in scheduler.running if self._may_speculate(s)]
        if not seqs:
            return
        self._plans += 1
        if self.auto and self._plans % EXPLORE_EVERY and not self._could_pay(scheduler, seqs):
            self._candidates = {s.request_id: None for s in seqs}  # decoding request-steps at k = 0
            return
        caps = [self._cap(s) for s in seqs]
        free = {p.name: [self._trim(s, t) for s, t in zip(seqs, p.propose(seqs, caps))]
                for p in self.proposers if p.free}
        for i, s in enumerate(seqs):
            self._shadow[s.request_id] = {name: props[i][0] for name, props in free.items() if props[i]}
        chosen, alphas, lengths = [], [], []
        for i, s in enumerate(seqs):  # per request, the proposer most likely to be right that has a guess
            options = [(self.acceptance.rate(s.request_id, p.name), p.name) for p in self.proposers
                       if not p.free or free[p.name][i]]
            alpha, name = max(options) if options else (0.0, None)
            chosen.append(name)
            alphas.append(alpha)
            lengths.append(0 if name is None else min(caps[i], len(free[name][i]) if name in free else caps[i]))
        ks = self._choose(scheduler, seqs, alphas, lengths, chosen) if self.auto else lengths
        self._candidates = {s.request_id: name for s, name in zip(seqs, chosen)}
        for i, (s, name, k) in enumerate(zip(seqs, chosen, ks)):
            if k and name in free:
                s.draft_token_ids, s.draft_proposer = free[name][i][:k], name
        for p in self.proposers:
            mine = [(s, k) for s, name, k in zip(seqs, chosen, ks) if k and name == p.name and not p.free]
            if mine:
                guesses = p.propose([s for s, _ in mine], [k for _, k in mine])
                if isinstance(p, DraftModelProposer):
                    self.draft_time.observe(p.last_steps, p.last_tokens, p.last_seconds)
                for (s, k), g in zip(mine, guesses):
                    s.draft_token_ids, s.draft_proposer = self._trim(s, g)[:k], p.name

    def _may_speculate(self, seq) -> bool:
        # not while reasoning: the block's end would have to move constraints and stops mid-draft
        return (seq.num_uncomputed == 1 and seq.num_output_tokens > 0 and not seq.streamed
                and seq.finish_reason is None and seq.reasoning is None)

    def _cap(self, seq) -> int:
        """The most drafts ``seq`` may verify: the limit, the context, and its remaining output tokens."""
        engine = self.engine
        cap = min(self.k_limit, engine.max_model_len - 1 - len(seq.token_ids))
        constraint = engine._constraints.get(seq.request_id)
        if constraint is None or not constraint.bounded:
            cap = min(cap, seq.params.max_tokens - seq.num_output_tokens - 1)
        return max(cap, 0)

    def _trim(self, seq, tokens: list[int]) -> list[int]:
        """Cut a proposal at the first token the request's output constraint forbids (or that completes it)."""
        constraint = self.engine._constraints.get(seq.request_id)
        if constraint is None or not tokens:
            return tokens
        state = seq.constraint_node
        for j, t in enumerate(tokens):
            state = constraint.draft_step(state, t)
            if state is None:
                return tokens[:j]
        return tokens

    def _could_pay(self, scheduler, seqs) -> bool:
        """Whether even a sure draft would raise this step's goodput: at high load a step's time grows with every
        token, and then asking the proposers for every request each step is pure overhead."""
        shape, _ = self._expected_shape(scheduler, seqs)
        base = self.step_time.predict(shape)
        if base is None:
            return False
        per_draft, per_request = self.step_time.draft_costs()
        k = self.k_limit  # one request's longest run of sure drafts: (N + k) / (base + cost) > N / base
        return base * k > len(seqs) * (k * per_draft + per_request)

    def _expected_shape(self, scheduler, seqs) -> tuple[StepShape, int]:
        """The coming step without drafts, and the token budget left for drafts (never taken from prefills)."""
        budget = scheduler.max_num_batched_tokens
        pending = sum(s.num_uncomputed for s in scheduler.running if s.num_uncomputed > 1 or s.num_output_tokens == 0)
        for s in scheduler.waiting:
            if pending >= budget:
                break
            pending += s.num_uncomputed
        prefill = min(pending, max(budget - len(seqs), 0))
        shape = StepShape(prefill, len(seqs), len(scheduler.running) + (1 if scheduler.waiting else 0),
                          sum(len(s.token_ids) for s in scheduler.running))
        return shape, max(budget - len(seqs) - prefill, 0)

    def _choose(self, scheduler, seqs, alphas, lengths, chosen) -> list[int]:
        """SmartSpec: per request, the k with the best expected goodput of the whole step."""
        shape, room = self._expected_shape(scheduler, seqs)
        base = self.step_time.predict(shape)
        if base is None:
            return [0] * len(seqs)  # nothing measured yet: this step measures the batch without drafts
        per_draft, per_drafting_request = self.step_time.draft_costs()
        uses_draft = any(name == "draft" for name in chosen)

        def seconds(total: int, k_max: int, drafting: int) -> float:
            t = base + per_draft * total + per_drafting_request * drafting
            if uses_draft:
                t += self.draft_time.predict(k_max, total)
            return t

        return choose_lengths(alphas, lengths, seconds, max_total=room)

    # ---- after a step ---------------------------------------------------------------------------------
    def observe_step(self, shape: StepShape, seconds: float) -> None:
        """A target step ran: its shape (``step_shape``) and seconds feed the batch-time model."""
        self.step_time.observe(shape, seconds)

    @staticmethod
    def step_shape(batch) -> StepShape:
        """The shape of a scheduled batch, before its requests' progress is updated."""
        prefill = decode = drafting = 0
        for s, n in zip(batch.seqs, batch.num_new_tokens):
            if n - len(s.draft_token_ids) == 1 and s.num_output_tokens > 0:
                decode += n
                drafting += n > 1
            else:
                prefill += n
        return StepShape(prefill, decode, len(batch.seqs),
                         sum(s.num_computed + n for s, n in zip(batch.seqs, batch.num_new_tokens)), drafting)

    def verified(self, seq, tokens: list[int]) -> None:
        """``seq`` verified its drafts and will append ``tokens`` (accepted drafts, then one more)."""
        k, rid = len(seq.draft_token_ids), seq.request_id
        if rid not in self._candidates:  # not a decoding step (the end of a prefill)
            return
        name = self._candidates.pop(rid)
        self.request_steps += 1
        if name is not None:
            self._stats[name]["request_steps"] += 1
            self._stats[name]["k_sum"] += k
        if k:
            accepted = len(tokens) - 1
            self.acceptance.record(rid, name, accepted, accepted + (accepted < k))
            self.proposed += k
            self.accepted += accepted
            self._stats[name]["proposed"] += k
            self._stats[name]["accepted"] += accepted
        for other, first in self._shadow.pop(rid, {}).items():
            if not (k and other == name):  # the used proposer's first token is already one of its trials
                self.acceptance.record(rid, other, int(first == tokens[0]), 1)
        seq.draft_token_ids, seq.draft_proposer = [], None

    def appended(self, seq, tokens: list[int]) -> None:
        for p in self.proposers:
            p.on_tokens(seq, tokens)

    def finish(self, seq) -> None:
        for p in self.proposers:
            p.finish(seq)
        self.acceptance.forget(seq.request_id)
        self._shadow.pop(seq.request_id, None)
        self._candidates.pop(seq.request_id, None)

    # ---- reporting ------------------------------------------------------------------------------------
    def stats(self) -> dict:
        by = {}
        for name, c in self._stats.items():
            by[name] = {
                "proposed_tokens": c["proposed"],
                "accepted_tokens": c["accepted"],
                "mean_k": c["k_sum"] / c["request_steps"] if c["request_steps"] else 0.0,
                "acceptance_rate": c["accepted"] / c["proposed"] if c["proposed"] else 0.0,
                "acceptance_estimate": self.acceptance.proposer_rate(name),
            }
        k_sum = sum(c["k_sum"] for c in self._stats.values())
        return {
            "spec_proposed_tokens": self.proposed,
            "spec_accepted_tokens": self.accepted,
            "spec_mean_k": k_sum / self.request_steps if self.request_steps else 0.0,
            "spec_acceptance_rate": self.accepted / self.proposed if self.proposed else 0.0,
            "spec_by_proposer": by,
            "spec_step_time_weights": self.step_time.weights,
        }

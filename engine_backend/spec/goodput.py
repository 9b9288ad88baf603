"""SmartSpec's choice: how many speculative tokens each request verifies this step (arXiv 2406.14066).

Goodput is the tokens a step is expected to add to outputs, divided by the seconds it is expected to
take. Speculating more adds tokens only as far as proposals are right, and makes every step of the
batch slower; at low load a step costs about the same for 1 or 5 tokens per request, at high load
it costs in proportion. Two online estimates give both sides:

**Acceptance.** Proposed tokens are modelled as independent trials with a per-(request, proposer)
rate alpha: the j-th draft token is kept if it and every one before it are right, with probability
alpha**j, so k drafts add ``sum_{j=1..k} alpha**j`` tokens in expectation (plus the one token every
step yields). Each verification gives trials until the first rejection: ``a`` successes out of
``a + (a < k)`` trials. A free proposer (prompt lookup, batch lookup) also gets one trial per step
when it is not used: its first proposed token against the token the step produced ("shadow"
trials), so an estimate stays alive while its proposer is switched off. A request's rate is its own
counts shrunk toward its proposer's batch-wide rate (``PRIOR_WEIGHT`` pseudo-trials), which itself
starts at ``PRIOR_ALPHA`` and forgets slowly (``DECAY`` per update), so a query whose answers turn
predictable is noticed.

**Batch time.** A step's seconds are modelled as
``w0 + w1*prefill tokens + w2*decode tokens + w3*requests + w4*context + w5*drafting requests``
(``StepShape``: new tokens of prompt chunks, new tokens of decoding requests, one each plus their drafts,
requests in the batch, tokens they attend to, and requests verifying at least one draft: such a request
leaves the batch's single decode attention call for a run of its own), fitted by ridge-regularised least squares over exponentially weighted steps
actually run (``BatchTimeModel``). Prefill and decode tokens get their own weights because they run
through different attention shapes (one long chunk against short draft runs), so the cost of a draft
token is learned from steps with drafts, not borrowed from prompt chunks. The ridge pulls toward
"every step costs what the first one did", so early on speculation looks nearly free and gets tried,
and the slope is learned from the steps that tried it. Proposal time is modelled the same way for a
draft model (``DraftTimeModel``): ``v0 * draft steps + v1 * draft tokens``.

**The choice** (``choose_lengths``). With the batch's other work fixed, a step's time depends on
the total number of draft tokens K, the requests drafting and (for a draft model) the longest draft.
Each request either speculates or not, and those that do verify one length k per step (or their
whole proposal if shorter): the runner attends runs of one length in one call, and every extra
length would cost a call of its own, which the time model does not see. For every k up to the cap,
requests join in order of acceptance while the expected goodput (expected tokens over predicted
seconds) grows; the best (k, set of requests) is kept, no speculation included.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

PRIOR_ALPHA = 0.5  # a proposer's acceptance before it has been tried
PRIOR_WEIGHT = 4.0  # pseudo-trials of the proposer-wide rate behind each request's own estimate
DECAY = 0.995  # per update, of the proposer-wide counts (about the last 200 trials count)


class AcceptanceEstimator:
    """Per-proposer and per-(request, proposer) acceptance rates from verification and shadow trials."""

    def __init__(self):
        self._global: dict[str, list[float]] = {}  # proposer -> [successes, trials], decayed
        self._own: dict[tuple[str, str], list[float]] = {}  # (request id, proposer) -> [successes, trials]

    def record(self, request_id: str, proposer: str, successes: int, trials: int) -> None:
        if trials <= 0:
            return
        g = self._global.setdefault(proposer, [PRIOR_ALPHA * PRIOR_WEIGHT, PRIOR_WEIGHT])
        g[0] = g[0] * DECAY + successes
        g[1] = g[1] * DECAY + trials
        own = self._own.setdefault((request_id, proposer), [0.0, 0.0])
        own[0] += successes
        own[1] += trials

    def proposer_rate(self, proposer: str) -> float:
        s, t = self._global.get(proposer, (PRIOR_ALPHA, 1.0))
        return s / t

    def rate(self, request_id: str, proposer: str) -> float:
        s, t = self._own.get((request_id, proposer), (0.0, 0.0))
        return (s + PRIOR_WEIGHT * self.proposer_rate(proposer)) / (t + PRIOR_WEIGHT)

    def forget(self, request_id: str) -> None:
        for key in [k for k in self._own if k[0] == request_id]:
            del self._own[key]


class _RidgeModel:
    """Least squares over exponentially weighted observations, pulled toward a prior weight vector."""

    def __init__(self, num_features: int, forget: float = 0.98, ridge: float = 1.0):
        self.a = np.zeros((num_features, num_features))
        self.b = np.zeros(num_features)
        self.forget = forget
        self.ridge = ridge
        self.prior = None
        self.w = None
        self.observations = 0

    def observe(self, x: list[float], y: float) -> None:
        x = np.asarray(x, dtype=float)
        if self.prior is None:
            self.prior = np.zeros_like(x)
            self.prior[0] = y / max(x[0], 1.0)  # "every step costs what the first one did"
        self.a = self.forget * self.a + np.outer(x, x)
        self.b = self.forget * self.b + x * y
        self.observations += 1
        scale = np.maximum(np.diag(self.a), 1e-12)  # ridge per feature, relative to its own magnitude
        lam = self.ridge * np.diag(scale) / max(self.observations, 1)
        w = np.maximum(np.linalg.solve(self.a + lam + 1e-12 * np.eye(len(x)), self.b + lam @ self.prior), 0.0)
        self.w = [float(v) for v in w]  # plain floats: predictions run thousands of times per step

    def predict(self, x: list[float]) -> float | None:
        return None if self.w is None else sum(w * v for w, v in zip(self.w, x))


@dataclass(frozen=True)
class StepShape:
    """What a step's seconds are modelled on."""

    prefill_tokens: int  # new tokens of prompt chunks
    decode_tokens: int  # new tokens of decoding requests: one each, plus the drafts they verify
    requests: int
    context: int  # tokens attended: each request's computed tokens once the step is done
    drafting: int = 0  # requests verifying at least one draft

    def features(self) -> list[float]:
        return [1.0, float(self.prefill_tokens), float(self.decode_tokens), float(self.requests), float(self.context),
                float(self.drafting)]


class BatchTimeModel:
    """Seconds of one target-model step from its ``StepShape``."""

    def __init__(self):
        self._model = _RidgeModel(6)

    def observe(self, shape: StepShape, seconds: float) -> None:
        self._model.observe(shape.features(), seconds)

    def predict(self, shape: StepShape) -> float | None:
        return self._model.predict(shape.features())

    def draft_costs(self) -> tuple[float, float]:
        """Seconds one more draft token adds to a step (a decode token and a token attended), and what a request's
        first draft adds on top (it leaves the decode call)."""
        w = self._model.w
        return (0.0, 0.0) if w is None else (w[2] + w[4], w[5])

    @property
    def weights(self) -> list[float] | None:
        return self._model.w


class DraftTimeModel:
    """Seconds a draft model takes to propose: ``v0 * steps + v1 * tokens`` (both over the whole batch)."""

    def __init__(self):
        self._model = _RidgeModel(2)

    def observe(self, steps: int, tokens: int, seconds: float) -> None:
        if steps:
            self._model.observe([float(steps), float(tokens)], seconds)

    def predict(self, steps: int, tokens: int) -> float:
        if not steps:
            return 0.0
        t = self._model.predict([float(steps), float(tokens)])
        return 0.0 if t is None else t


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens a step adds for one request verifying k drafts of acceptance ``alpha``: 1 + alpha + ... + alpha**k."""
    return sum(alpha ** j for j in range(k + 1))


def choose_lengths(alphas: list[float], caps: list[int], step_seconds: Callable[[int, int, int], float],
                   max_total: int | None = None) -> list[int]:
    """The number of drafts per request that maximises expected tokens per second.

    ``alphas[i]``: request i's acceptance estimate; ``caps[i]``: the most drafts it may verify (proposal
    length, remaining tokens); ``step_seconds(K, k_max, n)``: the predicted seconds of a step with K drafts in
    all, k_max of them for the longest request, n requests drafting; ``max_total``: the most drafts in all.

    Each request speculates or not (k = 0), and those that do verify one length k of the step (or their whole
    proposal, if shorter): runs of one length share one attention call, where every distinct length would cost
    a call of its own. For each k, requests join in order of acceptance while the step's expected goodput
    grows; the best (k, requests) wins, no speculation included. Ties go to fewer drafts."""
    order = sorted((i for i in range(len(alphas)) if caps[i] > 0 and alphas[i] > 0), key=lambda i: -alphas[i])
    n = float(len(alphas))
    best, best_k, best_count = n / max(step_seconds(0, 0, 0), 1e-9), 0, 0
    for k in range(1, max(caps, default=0) + 1):
        tokens, total = n, 0
        for count, i in enumerate(order, 1):
            ki = min(k, caps[i])
            if max_total is not None and total + ki > max_total:
                break
            tokens += expected_tokens(alphas[i], ki) - 1
            total += ki
            goodput = tokens / max(step_seconds(total, k, count), 1e-9)
            if goodput > best * (1 + 1e-9):
                best, best_k, best_count = goodput, k, count
    ks = [0] * len(alphas)
    for i in order[:best_count]:
        ks[i] = min(best_k, caps[i])
    return ks

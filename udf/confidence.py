"""How sure a model was of one answer, from the logprobs the engine reports (``GenerationResult.logprobs``).

* A function with choices (``llm_filter``, ``llm_classify``, ``llm_score``): the probability of the chosen choice
  among the choices, read at the answer's first token from the model's own distribution. For two labels this is
  the label margin in another scale (p = (1 + margin) / 2). It needs choices whose first tokens differ (they
  nearly always do: " yes" / " no", labels); when two share their first token, or a choice's first token is not
  among the alternatives reported, the free-text measure is used instead.
* Free text (``llm``, ``llm_extract``): the geometric mean of the answer's token probabilities,
  ``exp(mean logprob)``.

Both are in [0, 1]; the router and the cascade (``udf.routing``) compare them with a threshold. An answer
without logprobs (a backend that has none) has no confidence: None.
"""
from __future__ import annotations

import math
from typing import Any

# alternatives asked for per answer token: enough to see every choice of a usual label set at the first token
TOP_LOGPROBS = 20


def confidence(choices: dict[str, Any] | None, answer: str | None,
               logprobs: list[tuple[float, dict[str, float]]] | None) -> float | None:
    if not logprobs or answer is None:
        return None
    if choices:
        p = _choice_probability(list(choices), answer, logprobs[0][1])
        if p is not None:
            return p
    return math.exp(sum(lp for lp, _ in logprobs) / len(logprobs))


def _choice_probability(choices: list[str], answer: str, first: dict[str, float]) -> float | None:
    chosen = next((c for c in choices if c == answer), None) or next(
        (c for c in choices if c.strip() == answer.strip()), None)
    if chosen is None:
        return None
    firsts: dict[str, str] = {}  # choice -> the reported token it starts with (the longest that fits)
    for c in choices:
        token = max((t for t in first if t and c.startswith(t)), key=len, default=None)
        if token is not None:
            firsts[c] = token
    if chosen not in firsts or len(set(firsts.values())) < len(firsts):
        return None  # unseen, or two choices behind one token: the first token cannot tell them apart
    weights = {c: math.exp(first[t]) for c, t in firsts.items()}
    return weights[chosen] / sum(weights.values())

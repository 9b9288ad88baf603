"""The text of ``llm_sql.explain``'s stage records, shared by DuckDB and Spark mode: the estimates, and with
``analyze`` the estimates beside the actual figures, and how a stage's rows are routed."""
from __future__ import annotations

from typing import Any

# (label, the estimate's key in a stage record, the actual's key in last_stats' stage record)
COMPARED = (("requests", "est_requests", "llm_calls"),
            ("prompt tokens", "est_prompt_tokens", "prompt_tokens"),
            ("cached prompt tokens", "est_cached_prompt_tokens", "cached_prompt_tokens"),
            ("generated tokens", "est_generated_tokens", "generated_tokens"),
            ("LLM seconds", "est_seconds", "llm_seconds"))


def fmt(value: Any) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, float):
        return f"{value:.3f}" if value < 100 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def estimate_lines(s: dict[str, Any]) -> list[str]:
    if "est_prompt_tokens" not in s:
        return []
    if "est_requests" not in s:  # not estimated beyond the prompts (a multi-label join)
        return [f"  est. prompt tokens:  {s['est_prompt_tokens']} (guessed: characters / 4)",
                f"  est. prefix hit:     {s['est_hit_rate']:.1%} (original order {s['est_hit_rate_original']:.1%})",
                f"  note:                {s['est_note']}"]
    actual = s.get("actual")
    lines = []
    if actual is None:
        cache = f" ({s['est_result_cache_hits']} answered by the result cache)" if s.get("est_result_cache_hits") else ""
        lines += [f"  est. requests:       {s['est_requests']}{cache}",
                  f"  est. prompt tokens:  {s['est_prompt_tokens']} ({s['est_tokens_source']})",
                  f"  est. prefix hit:     {s['est_hit_rate']:.1%} (original order {s['est_hit_rate_original']:.1%}; "
                  f"{s['est_hit_source']})",
                  f"  est. generated tok.: {s['est_generated_tokens']} ({s['est_generated_source']})",
                  f"  est. LLM seconds:    {fmt(s['est_seconds'])} ({s['est_seconds_source']})"]
    else:
        rows = [("", "estimate", "actual", "est/actual")]
        for label, est_key, act_key in COMPARED:
            e, a = s.get(est_key), actual.get(act_key)
            ratio = f"{e / a:.2f}" if isinstance(e, (int, float)) and a else ""
            rows.append((label, fmt(e), fmt(a), ratio))
        act_hit = actual["cached_prompt_tokens"] / actual["prompt_tokens"] if actual.get("prompt_tokens") else 0.0
        rows.insert(4, ("prefix hit", f"{s['est_hit_rate']:.1%}", f"{act_hit:.1%}", ""))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            lines.append("  " + r[0].ljust(widths[0] + 2) + "  ".join(c.rjust(w) for c, w in zip(r[1:], widths[1:])))
        lines += [f"  prompt tokens:       {s['est_tokens_source']}; prefix hit: {s['est_hit_source']} (original "
                  f"order {s['est_hit_rate_original']:.1%})",
                  f"  generated tokens:    {s['est_generated_source']}",
                  f"  LLM seconds:         {s['est_seconds_source']}"]
        if actual.get("cache_hits"):
            lines.append(f"  result cache:        {actual['cache_hits']} answered (estimated "
                         f"{s['est_result_cache_hits']})")
    if s.get("est_note"):
        lines.append(f"  note:                {s['est_note']}")
    return lines


def routing_line(r: dict[str, Any]) -> str:
    kind = r["kind"]
    if kind == "multi-label join":
        return (f"multi-label join: one call per value of the larger side of ({', '.join(r['fields'])}) lists the "
                f"smaller side's values (at most {r['max_values']}, else pairwise); this changes the prompts")
    if kind == "reasoning":
        return f"reasoning on, at most {r['max_reasoning_tokens']} thinking tokens per row"
    if kind == "router":
        return (f"answer on {r['stages'][0]} without reasoning; rows with confidence < {r['reasoning_threshold']} "
                f"are asked again with reasoning")
    if kind == "cascade":
        return (f"cascade {' -> '.join(r['stages'])}: rows with confidence < {r['cascade_threshold']} go to the "
                f"next model")
    target = next(k for k in r if k.startswith("target_"))
    return (f"calibrated cascade {' -> '.join(r['stages'])}: threshold chosen on {r['calibration_sample']} sampled "
            f"rows for {target} {r[target]}; {r['guarantee']}")



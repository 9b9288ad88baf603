"""The LLM functions' calls: validation, decoding parameters, and how an answer is read.

What each function is (SQL types, prompt cue, decoding constraint) is its entry in ``udf.registry``.
Decoding is greedy (``temperature=0``) unless an option says otherwise. The constrained functions
size ``max_tokens`` themselves (the longest choice's UTF-8 byte length + 2, which bounds its token
count under a byte-level tokenizer), so a ``max_tokens`` option only affects ``llm``. Any output that
is not one of the choices (a backend without constrained decoding can produce one) is a per-row
failure: NULL with the reason recorded.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from engine_backend.sampling_params import SamplingParams
from udf.api import LLMCall
from udf.options import DEFAULT_MAX_REASONING_TOKENS, DEFAULT_MAX_TOKENS, validate_options
from udf.registry import spec_of


def validate_labels(labels: Any) -> tuple[str, ...]:
    """Labels of ``llm_classify``: a non-empty list of distinct, non-empty strings."""
    if labels is None:
        raise ValueError("llm_classify needs labels: a non-empty list of distinct strings, "
                         "e.g. ['positive', 'negative']")
    if isinstance(labels, str) or not isinstance(labels, Iterable):
        raise ValueError(f"llm_classify labels must be a list of strings, got {type(labels).__name__} {labels!r}")
    labels = list(labels)
    if not labels:
        raise ValueError("llm_classify labels are empty: give at least one label")
    for lbl in labels:
        if not isinstance(lbl, str):
            raise ValueError(f"llm_classify labels must be strings, got {type(lbl).__name__} {lbl!r}")
        if lbl.strip() == "":
            raise ValueError(f"llm_classify labels contain an empty label: {labels!r}")
    dupes = sorted({lbl for lbl in labels if labels.count(lbl) > 1})
    if dupes:
        raise ValueError(f"llm_classify labels contain duplicates {dupes!r}: {labels!r}")
    return tuple(labels)


def make_call(function: str, instruction: str | None = None, field_names: Iterable[str] = (),
              labels: Iterable[str] | None = None,
              options: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None) -> LLMCall:
    """A validated ``LLMCall`` (options checked and sorted, labels checked)."""
    call = LLMCall(function=function, instruction=instruction,
                   labels=validate_labels(labels) if function == "llm_classify" else None,
                   field_names=tuple(field_names), options=validate_options(options))
    validate_call(call)
    return call


def validate_call(call: LLMCall) -> None:
    spec = spec_of(call.function)
    if not call.field_names and not spec.has_instruction:
        raise ValueError(f"{call.function} needs at least one field argument")
    if any(not isinstance(n, str) for n in call.field_names):
        raise ValueError(f"{call.function} field names must be strings: {call.field_names!r}")
    if spec.typed_by_schema and dict(call.options).get("schema") is not None:
        output_of(dict(call.options))  # a malformed schema fails the query now, naming it (a missing one at evaluation)
    if not spec.has_instruction:
        validate_labels(call.labels)
    else:
        if call.instruction is None or not isinstance(call.instruction, str) or not call.instruction.strip():
            raise ValueError(f"{call.function} needs a non-empty instruction (text or a preset name)")
    validate_options(call.options)


DEFAULT_EXTRACT_MAX_TOKENS = 256  # a JSON answer is longer than a label


def output_of(opts: Mapping[str, Any]):
    """The ``udf.extract.OutputSchema`` named by merged options' ``schema`` (``llm_extract``); ValueError if none.
    Compiled once per schema (``output_schema`` is cached), so the per-row path pays a dict lookup."""
    from udf.extract import output_schema

    return output_schema(opts.get("schema"))


def arrow_type_of(call: LLMCall, defaults: Mapping[str, Any] | None = None):
    """The Arrow type of the call's values: its function's, the schema's (``llm_extract``), and wrapped as
    STRUCT(answer, reasoning) with ``return_reasoning``."""
    import pyarrow as pa

    from udf.options import merge_options

    spec = spec_of(call.function)
    opts = merge_options(defaults, call.options)
    base = output_of(opts).arrow_type if spec.typed_by_schema else spec.arrow_type
    if opts.get("return_reasoning"):
        return pa.struct([("answer", base), ("reasoning", pa.string())])
    return base


def duckdb_type_of(call: LLMCall, defaults: Mapping[str, Any] | None = None) -> str:
    """The DuckDB SQL type of the call's values (see ``arrow_type_of``)."""
    from udf.options import merge_options

    spec = spec_of(call.function)
    opts = merge_options(defaults, call.options)
    base = output_of(opts).duckdb_type if spec.typed_by_schema else spec.duckdb_type
    return _with_reasoning(base) if opts.get("return_reasoning") else base


def registered_duckdb_type(function: str, defaults: Mapping[str, Any] | None = None) -> str | None:
    """The SQL type ``function``'s DuckDB UDF is registered with: its own, wrapped when the session's defaults
    ask for ``return_reasoning``; None for a function typed by each call's schema (registered per schema)."""
    spec = spec_of(function)
    if spec.typed_by_schema:
        return None
    return _with_reasoning(spec.duckdb_type) if (defaults or {}).get("return_reasoning") else spec.duckdb_type


def _with_reasoning(duckdb_type: str) -> str:
    # one spelling: llm_sql.duckdb_mode compares a call's type with its registration's as text
    return f"STRUCT(answer {duckdb_type}, reasoning VARCHAR)"


def choice_map(call: LLMCall) -> dict[str, Any] | None:
    """Constrained outputs (as sent to the backend) -> SQL value; None for free text."""
    choices = spec_of(call.function).choices
    return None if choices is None else choices(call)


def sampling_params(call: LLMCall, opts: Mapping[str, Any], confidence: bool = False) -> SamplingParams:
    """The backend request parameters for ``call`` with merged options ``opts``; ``confidence`` asks for the
    logprobs ``udf.confidence`` reads. ``reasoning`` must be 'off' or 'on' here: 'auto' is ``udf.routing``'s."""
    choices = choice_map(call)
    kwargs: dict[str, Any] = dict(temperature=float(opts.get("temperature", 0.0)),
                                  top_p=float(opts.get("top_p", 1.0)), top_k=int(opts.get("top_k", 0)),
                                  seed=opts.get("seed"))
    mode = opts.get("reasoning", "off")
    if mode == "auto":
        raise ValueError("reasoning 'auto' is answered in stages by udf.routing.answer, not by one evaluation")
    if mode == "on":
        kwargs["reasoning"] = True
        kwargs["max_reasoning_tokens"] = int(opts.get("max_reasoning_tokens", DEFAULT_MAX_REASONING_TOKENS))
    if confidence:
        from udf.confidence import TOP_LOGPROBS

        kwargs["logprobs"] = TOP_LOGPROBS if choices else 0
    if spec_of(call.function).typed_by_schema:
        kwargs["json_schema"] = output_of(opts).json_schema
        kwargs["max_tokens"] = int(opts.get("max_tokens", DEFAULT_EXTRACT_MAX_TOKENS))
    elif choices is None:
        kwargs["max_tokens"] = int(opts.get("max_tokens", DEFAULT_MAX_TOKENS))
    else:
        kwargs["choices"] = list(choices)
        kwargs["max_tokens"] = max(len(c.encode("utf-8")) for c in choices) + 2
    return SamplingParams(**kwargs)


def params_key(params: SamplingParams) -> dict[str, Any]:
    """The sampling parameters that can change an answer, for the result-cache key."""
    key = {"max_tokens": params.max_tokens, "temperature": params.temperature, "top_p": params.top_p,
           "top_k": params.top_k, "seed": params.seed, "stop": list(params.stop), "choices": params.choices}
    if params.json_schema is not None:  # only when set: earlier cache keys stay valid
        key["json_schema"] = params.json_schema
    if params.reasoning:
        key["reasoning"] = params.max_reasoning_tokens
    if params.logprobs is not None:  # the cached value then carries the confidence as well (udf.batch)
        key["logprobs"] = params.logprobs
    return key


def parse_output(call: LLMCall, text: str | None, opts: Mapping[str, Any] | None = None
                 ) -> tuple[Any, str | None]:
    """(value, None) or (None, reason) for one raw model output; ``opts``: the call's merged options."""
    if text is None:
        return None, "the backend returned no text"
    if spec_of(call.function).typed_by_schema:
        return output_of(opts if opts is not None else dict(call.options)).parse(text)
    choices = choice_map(call)
    if choices is None:
        return text.strip(), None
    if text in choices:
        return choices[text], None
    stripped = text.strip()
    for choice, value in choices.items():  # a backend that drops or adds whitespace
        if choice.strip() == stripped:
            return value, None
    if call.function == "llm_filter":
        low = stripped.lower().rstrip(".!")
        if low in ("yes", "no"):
            return low == "yes", None
    allowed = ", ".join(repr(c.strip()) for c in choices)
    return None, f"unparsable output {text!r} for {call.function}: expected one of {allowed}"


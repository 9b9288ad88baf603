"""Per-connection state: the backend, the settings, the result cache and the statistics of the last query.

``Session`` is built by ``llm_sql.register`` from its keyword options (validated here, so a typo is a clear
error before anything heavy happens). The backend is created on first use, except that a model directory
that does not exist and an OpenAI-compatible server that does not answer are reported at ``register``.
"""
from __future__ import annotations

import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from udf.api import EvalSettings, StageStats

BACKENDS = ("embedded", "openai", "vllm")
# register(...) options that are not function defaults
SESSION_OPTIONS = ("model", "backend", "base_url", "api_key", "optimize", "dedup", "reorder", "cache", "cache_path",
                   "on_error", "progress", "device", "dtype", "kv_cache_memory", "enable_prefix_caching",
                   "backend_options")


@dataclass
class QueryStats:
    """What the last query cost: sums over its stages (and fallback UDF chunks), plus per-stage detail."""

    rows_in: int = 0
    distinct_inputs: int = 0
    llm_calls: int = 0  # requests sent to the backend after dedup and the result cache
    cache_hits: int = 0  # answered by the persistent result cache
    null_inputs: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    generated_tokens: int = 0
    solve_seconds: float = 0.0
    llm_seconds: float = 0.0
    total_seconds: float = 0.0
    optimized: bool = True
    fallback_reason: str | None = None  # why the whole query ran through the fallback UDFs, if it did
    stages: list[dict[str, Any]] = field(default_factory=list)  # one per lifted stage
    fallback_chunks: int = 0  # chunks answered by the fallback UDFs
    error_reasons: list[str] = field(default_factory=list)  # the first few per-row failure reasons

    @property
    def prefix_hit_rate(self) -> float:
        return self.cached_prompt_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def add(self, s: StageStats) -> None:
        for name in ("rows_in", "distinct_inputs", "llm_calls", "cache_hits", "null_inputs", "errors",
                     "prompt_tokens", "cached_prompt_tokens", "generated_tokens"):
            setattr(self, name, getattr(self, name) + int(getattr(s, name)))
        self.solve_seconds += float(s.solve_seconds)
        self.llm_seconds += float(s.llm_seconds)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["prefix_hit_rate"] = self.prefix_hit_rate
        return d

    def __getitem__(self, key: str) -> Any:  # stats["llm_calls"] as well as stats.llm_calls
        return self.as_dict()[key]

    def summary(self) -> str:
        lines = [f"rows in             {self.rows_in}",
                 f"distinct inputs     {self.distinct_inputs}",
                 f"LLM calls           {self.llm_calls}",
                 f"result-cache hits   {self.cache_hits}",
                 f"errors              {self.errors}",
                 f"prompt tokens       {self.prompt_tokens}",
                 f"cached prompt tok.  {self.cached_prompt_tokens}",
                 f"prefix hit rate     {self.prefix_hit_rate:.1%}",
                 f"generated tokens    {self.generated_tokens}",
                 f"solve seconds       {self.solve_seconds:.3f}",
                 f"LLM seconds         {self.llm_seconds:.3f}",
                 f"total seconds       {self.total_seconds:.3f}"]
        if self.fallback_reason:
            lines.append(f"fallback            {self.fallback_reason}")
        return "\n".join(lines)


def check_model_dir(model: str) -> str:
    """The resolved path of a Hugging Face model directory, or FileNotFoundError saying what is wrong."""
    p = Path(model).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"model directory not found: {model}")
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"not a Hugging Face model directory (no config.json): {model}")
    return str(p.resolve())


def resolve_model(model: str | None) -> str:
    """A checked model directory; without one, the demo's tiny random checkpoint, with a warning."""
    if model is None:
        from llm_sql.demo import default_demo_model

        print("llm-sql: no model given: using a tiny random-weight model that answers nonsense "
              "(pass model=DIR for real answers)", file=sys.stderr)
        model = str(default_demo_model())
    return check_model_dir(model)


def model_identity(backend: str, model: str | None, base_url: str | None = None) -> str:
    """What the result cache keys answers by: the backend kind and the model it serves (DuckDB and Spark
    mode compute it alike, so one cache file serves both)."""
    if backend == "openai":
        return f"openai:{base_url}:{model or ''}"
    return f"{backend}:{model}"


class Session:
    def __init__(self, *, model: str | None = None, backend: Any = "embedded", base_url: str | None = None,
                 api_key: str | None = None, optimize: bool = True, dedup: bool = True, reorder: bool = True,
                 cache: bool = True, cache_path: str | None = None, on_error: str = "null", progress: bool = True,
                 device: str = "cpu", dtype: str | None = None, kv_cache_memory: Any = None,
                 enable_prefix_caching: bool = True, backend_options: dict | None = None, **defaults: Any):
        from udf.options import validate_options

        if on_error not in ("null", "raise"):
            raise ValueError(f"on_error must be 'null' or 'raise', got {on_error!r}")
        try:
            self.defaults = dict(validate_options(defaults, where="register() option"))
        except ValueError as exc:
            if "unknown" in str(exc):
                raise TypeError(f"{exc}; session options: {', '.join(SESSION_OPTIONS)}") from None
            raise
        self.optimize = bool(optimize)
        self.settings = EvalSettings(dedup=bool(dedup), reorder=bool(reorder), result_cache=bool(cache),
                                     on_error=on_error, progress=bool(progress), defaults=self.defaults)
        # The plain per-row path: every call through the UDF, no dedup, no reordering.
        self.udf_settings = self.settings if self.optimize else EvalSettings(
            dedup=False, reorder=False, result_cache=bool(cache), on_error=on_error, progress=bool(progress),
            defaults=self.defaults)
        self._backend = None
        self._lock = threading.Lock()
        self.backend_kind = backend if isinstance(backend, str) else getattr(backend, "name", "custom")
        self.base_url = base_url
        self._backend_kwargs: dict[str, Any] = dict(backend_options or {})
        self._owns_backend = isinstance(backend, str)  # a Backend passed in is the caller's to close
        if not isinstance(backend, str):
            self._backend = backend  # a ready Backend instance
            self.model_id = f"{self.backend_kind}:{model or id(backend)}"
        elif backend == "embedded":
            model = resolve_model(model)
            kw = {"device": device, "enable_prefix_caching": enable_prefix_caching}
            if dtype:
                kw["dtype"] = dtype
            if kv_cache_memory:
                kw["kv_cache_memory"] = kv_cache_memory
            self._backend_kwargs = {"model": model, **kw, **self._backend_kwargs}
            self.model_id = model_identity("embedded", model)
        elif backend == "openai":
            if not base_url:
                raise ValueError("backend='openai' needs base_url='http://host:port'")
            self._backend_kwargs = {"base_url": base_url, "api_key": api_key, "model": model,
                                    **self._backend_kwargs}
            self.model_id = model_identity("openai", model, base_url)
            self._ping()
        elif backend == "vllm":
            self._backend_kwargs = {"model": check_model_dir(model) if model else model, **self._backend_kwargs}
            self.model_id = model_identity("vllm", model)
        else:
            raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)} or pass a Backend")
        self.result_cache = None
        if cache:
            from llm_sql.cache import ResultCache

            self.result_cache = ResultCache(path=cache_path)
        self.last = QueryStats(optimized=self.optimize)
        self.current: QueryStats | None = None
        self.query_counter = 0

    def _ping(self) -> None:
        """Fail at register time, naming the URL, when the server does not answer."""
        from engine_backend.backends import BackendError

        backend = self.backend
        try:
            backend._model()  # lists the models: one cheap request
        except BackendError:
            raise
        except Exception as exc:  # pragma: no cover - anything else the client raises
            raise BackendError(f"OpenAI-compatible server at {self.base_url} is not usable: {exc}") from None

    @property
    def backend(self):
        with self._lock:
            if self._backend is None:
                from engine_backend.backends import make_backend

                self._backend = make_backend(self.backend_kind, **self._backend_kwargs)
            return self._backend

    def get_backend(self, model: str | None = None):
        return self.backend

    def model_id_for(self, model: str | None = None) -> str:
        return self.model_id if not model else f"{self.model_id}|{model}"

    def on_stats(self, s: StageStats) -> None:  # fallback UDF chunks
        target = self.current or self.last
        target.add(s)
        target.fallback_chunks += 1

    def on_output(self, call, out) -> None:
        target = self.current or self.last
        for e in out.errors:
            if e is not None and len(target.error_reasons) < 20:
                target.error_reasons.append(e)

    def close(self) -> None:
        if self._backend is not None and self._owns_backend:
            self._backend.close()
        self._backend = None

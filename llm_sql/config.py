"""One configuration for every mode: the models a session can call, the switches, the result cache.

``make_config(**options)`` turns the keyword options of ``llm_sql.register`` (DuckDB or Spark) into a
``Config``, validating everything once, so a typo is a clear error before anything heavy happens and both
modes agree on what each option means.

Models. A session holds one or more named models; a call picks one with the option ``model``
(``{'model': 'large'}`` in DuckDB, ``named_struct('model', 'large')`` in Spark), and the result cache keys
its answers by that model's identity:

    register(con, model=DIR)                                     # one model, named DIR (and "default")
    register(con, models={"small": DIR1, "large": DIR2}, model="small")
    register(con, models={"local": DIR, "remote": "http://host:8000/v1"})         # a URL: OpenAI-compatible
    register(con, models={"gpt": {"backend": "openai", "base_url": URL, "model": "gpt-4o", "api_key": KEY}})

A dict entry may set ``backend``, ``model``, ``base_url``, ``api_key``, the engine options and
``backend_options``; what it leaves out comes from the session-level options. An unknown model name in a
call is a ``ValueError`` listing the session's models.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from udf.api import EvalSettings

BACKENDS = ("embedded", "openai", "vllm")
ENGINE_OPTIONS = ("device", "dtype", "kv_cache_memory", "enable_prefix_caching", "swap_space", "preemption",
                  "speculative")
# register(...) options that are not function defaults
SESSION_OPTIONS = ("model", "models", "backend", "base_url", "api_key", "optimize", "dedup", "reorder", "cache",
                   "cache_path", "on_error", "progress", *ENGINE_OPTIONS, "backend_options")
DEFAULT_NAME = "default"


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
        from llm_sql.models import default_demo_model

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


@dataclass(frozen=True)
class ModelSpec:
    """One model a session can call: where it runs and how to reach it."""

    name: str
    backend: str  # "embedded" | "openai" | "vllm" | "custom" (a Backend instance, DuckDB mode only)
    model: str | None  # checkpoint directory (embedded, vllm) or the served model's name (openai)
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    engine_options: tuple[tuple[str, Any], ...] = ()  # embedded: device, dtype, kv_cache_memory, ...
    backend_options: tuple[tuple[str, Any], ...] = ()

    @property
    def identity(self) -> str:
        return model_identity(self.backend, self.model, self.base_url)

    def backend_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``engine_backend.backends.make_backend(self.backend, ...)``."""
        if self.backend == "openai":
            kw: dict[str, Any] = {"base_url": self.base_url, "api_key": self.api_key, "model": self.model}
        else:
            kw = {"model": self.model, **{k: v for k, v in self.engine_options if v is not None}}
        return {**kw, **dict(self.backend_options)}


@dataclass(frozen=True)
class Config:
    """Everything a session needs; picklable, so Spark ships it to the Python workers."""

    models: tuple[ModelSpec, ...]
    default_model: str
    settings: EvalSettings  # the optimised path's switches and the function defaults
    optimize: bool = True
    cache: bool = True
    cache_path: str | None = None

    @property
    def defaults(self) -> dict[str, Any]:
        return self.settings.defaults

    @property
    def udf_settings(self) -> EvalSettings:
        """What the per-row UDFs use: the session's switches, or with ``optimize=False`` the plain per-row
        evaluation (no dedup, no reordering)."""
        return self.settings if self.optimize else replace(self.settings, dedup=False, reorder=False)

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    def model(self, name: str | None = None) -> ModelSpec:
        """The model a call names (None: the session's default). A model may also be named by its checkpoint
        directory or served model name, as one-model sessions were before they had names."""
        if name is None:
            name = self.default_model
        for m in self.models:
            if m.name == name:
                return m
        for m in self.models:
            if m.model is not None and name in (m.model, _resolved(m.model)):
                return m
        raise ValueError(f"unknown model {name!r}: this session's models are {', '.join(self.model_names)} "
                         "(register(..., models={name: DIR or URL, ...}) adds more)")

    def result_cache(self):
        if not self.cache:
            return None
        from llm_sql.cache import ResultCache

        return ResultCache(path=self.cache_path)


def _resolved(path: str) -> str:
    try:
        return str(Path(path).expanduser().resolve())
    except (OSError, RuntimeError):
        return path


def _spec(name: str, entry: Any, base: dict[str, Any]) -> ModelSpec:
    """A ``ModelSpec`` from a ``models`` entry (a directory, a URL or a dict) over the session-level options."""
    if isinstance(entry, str):
        if entry.startswith(("http://", "https://")):
            entry = {"backend": "openai", "base_url": entry, "model": None}
        else:
            entry = {"model": entry}
    if not isinstance(entry, Mapping):
        raise TypeError(f"models[{name!r}] must be a model directory, an http(s) URL or a dict, "
                        f"got {type(entry).__name__}")
    allowed = ("backend", "model", "base_url", "api_key", "backend_options", *ENGINE_OPTIONS)
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
        raise TypeError(f"models[{name!r}]: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    o = {**base, **entry}
    backend = o["backend"]
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)} or pass a Backend")
    o["speculative"] = _speculative_text(o.get("speculative"))
    engine = tuple((k, o.get(k)) for k in ENGINE_OPTIONS)
    options = tuple(sorted((o.get("backend_options") or {}).items()))
    if backend == "embedded":
        return ModelSpec(name, "embedded", resolve_model(o.get("model")), engine_options=engine,
                         backend_options=options)
    if backend == "openai":
        if not o.get("base_url"):
            raise ValueError(f"model {name!r}: backend='openai' needs base_url='http://host:port'")
        return ModelSpec(name, "openai", o.get("model"), base_url=o["base_url"], api_key=o.get("api_key"),
                         backend_options=options)
    model = o.get("model")
    return ModelSpec(name, "vllm", check_model_dir(model) if model else model, backend_options=options)


def _speculative_text(speculative: Any) -> str | None:
    """The engine's ``speculative`` option checked now (before any engine loads) and kept as JSON text, so a
    ``Config`` stays hashable and picklable and the same text reaches ``llm-sql serve --speculative``."""
    if speculative is None:
        return None
    import json

    from engine_backend.spec import parse_options

    options = parse_options(speculative)
    if options is None:
        return None
    if not all(isinstance(m, str) for m in options["method"]):
        raise ValueError("register(speculative=...) takes method names; a Proposer object works with LLMEngine only")
    return json.dumps(options, sort_keys=True)


def make_config(*, model: str | None = None, models: Mapping[str, Any] | None = None, backend: Any = "embedded",
                base_url: str | None = None, api_key: str | None = None, optimize: bool | None = True,
                dedup: bool = True, reorder: bool = True, cache: bool = True, cache_path: str | None = None,
                on_error: str = "null", progress: bool = True, device: str = "cpu", dtype: str | None = None,
                kv_cache_memory: Any = None, enable_prefix_caching: bool = True, swap_space: Any = None,
                preemption: str | None = None, speculative: Any = None, backend_options: dict | None = None,
                **defaults: Any) -> Config:
    """Validate ``register``'s options into a ``Config`` (see the module doc). ``backend`` may also be a ready
    ``Backend`` instance (DuckDB mode): it is the one model, named ``model`` or ``"default"``."""
    from udf.options import validate_options

    if on_error not in ("null", "raise"):
        raise ValueError(f"on_error must be 'null' or 'raise', got {on_error!r}")
    if preemption not in (None, "auto", "swap", "recompute"):  # the engine's modes, checked before it loads
        raise ValueError(f"preemption must be 'auto', 'swap' or 'recompute', got {preemption!r}")
    try:
        defaults = dict(validate_options(defaults, where="register() option"))
    except ValueError as exc:
        if "unknown" in str(exc):
            raise TypeError(f"{exc}; session options: {', '.join(SESSION_OPTIONS)}") from None
        raise
    base = {"backend": backend, "base_url": base_url, "api_key": api_key, "backend_options": backend_options,
            "device": device, "dtype": dtype, "kv_cache_memory": kv_cache_memory,
            "enable_prefix_caching": enable_prefix_caching, "swap_space": swap_space, "preemption": preemption,
            "speculative": speculative}
    if not isinstance(backend, str):  # a Backend instance
        if models:
            raise ValueError("models= cannot be combined with a Backend instance as backend=")
        name = model or getattr(backend, "name", None) or DEFAULT_NAME
        specs: tuple[ModelSpec, ...] = (ModelSpec(name, "custom", model or f"{name}@{id(backend)}"),)
        default = name
    elif models:
        if not isinstance(models, Mapping):
            raise TypeError(f"models must be a dict of name -> model directory, URL or dict, got "
                            f"{type(models).__name__}")
        bad = [n for n in models if not isinstance(n, str) or not n.strip()]
        if bad:
            raise ValueError(f"model names must be non-empty strings, got {bad!r}")
        specs = tuple(_spec(n, e, base) for n, e in models.items())
        default = model if model is not None else next(iter(models))
        if default not in models:
            raise ValueError(f"model={default!r} must name the default among models: {', '.join(models)}")
    else:
        name = model or DEFAULT_NAME
        specs = (_spec(name, {"model": model}, base),)
        default = name
    settings = EvalSettings(dedup=bool(dedup), reorder=bool(reorder), result_cache=bool(cache), on_error=on_error,
                            progress=bool(progress), defaults=defaults)
    return Config(models=specs, default_model=default, settings=settings,
                  optimize=True if optimize is None else bool(optimize), cache=bool(cache), cache_path=cache_path)

"""Tokenizer of a local checkpoint: ``tokenizers`` for ids, jinja2 for the chat template — no transformers.

Behaves like transformers 5.x ``AutoTokenizer`` on the same directory: the BOS/EOS post-processing follows
``add_bos_token``/``add_eos_token`` when tokenizer_config.json sets them (else tokenizer.json's own
post-processor), and chat templates render in the same sandboxed jinja2 environment.
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from .config import CheckpointError

_CLEANUPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
             (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def _token_str(v: Any) -> str | None:
    """tokenizer_config.json spells a token as "x" or {"content": "x", ...}."""
    if isinstance(v, dict):
        return v.get("content")
    return v if isinstance(v, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    return d if isinstance(d, dict) else {}


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, which byte-level BPE vocabularies are written in."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of the GPT-2 byte-to-unicode table used by byte-level BPE vocabularies."""
    return {c: b for b, c in bytes_to_unicode().items()}


@lru_cache(maxsize=32)
def _compile_template(source: str):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes HTML characters; chat templates expect plain JSON.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


class Tokenizer:
    """Encode/decode and chat formatting for one checkpoint directory (see module docstring)."""

    def __init__(self, backend, tokenizer_config: dict[str, Any], eos_token_ids: tuple[int, ...],
                 chat_template: str | None) -> None:
        self._tk = backend
        self.config = tokenizer_config
        self.chat_template = chat_template
        self.bos_token = _token_str(tokenizer_config.get("bos_token"))
        self.eos_token = _token_str(tokenizer_config.get("eos_token"))
        self.pad_token = _token_str(tokenizer_config.get("pad_token"))
        self.unk_token = _token_str(tokenizer_config.get("unk_token"))
        self.bos_token_id = self.token_to_id(self.bos_token) if self.bos_token else None
        self.eos_token_id = self.token_to_id(self.eos_token) if self.eos_token else None
        self.pad_token_id = self.token_to_id(self.pad_token) if self.pad_token else None
        self.eos_token_ids = tuple(dict.fromkeys(
            [*eos_token_ids, *([self.eos_token_id] if self.eos_token_id is not None else [])]))
        self.clean_up_tokenization_spaces = bool(tokenizer_config.get("clean_up_tokenization_spaces", False))
        self.special_token_ids = frozenset(
            i for i, t in backend.get_added_tokens_decoder().items() if t.special)

    @classmethod
    def from_dir(cls, path: str | Path) -> "Tokenizer":
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import processors

        path = Path(path)
        tok_file = path / "tokenizer.json"
        if not tok_file.is_file():
            raise CheckpointError(f"{tok_file} is missing: only fast (tokenizer.json) tokenizers are supported")
        try:
            backend = HFTokenizer.from_file(str(tok_file))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise CheckpointError(f"{tok_file} could not be loaded: {e}") from None
        tcfg = _read_json(path / "tokenizer_config.json")
        # Named special tokens missing from tokenizer.json are added, as transformers does.
        from tokenizers import AddedToken

        missing = [t for t in (_token_str(tcfg.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token"))
                   if t and backend.token_to_id(t) is None]
        if missing:
            backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
        if "add_bos_token" in tcfg or "add_eos_token" in tcfg or backend.post_processor is None:
            # transformers 5 rebuilds the post-processor from these flags when they are given.
            bos, eos = _token_str(tcfg.get("bos_token")), _token_str(tcfg.get("eos_token"))
            add_bos = bool(tcfg.get("add_bos_token")) and bos is not None
            add_eos = bool(tcfg.get("add_eos_token")) and eos is not None
            single = f"{bos + ':0 ' if add_bos else ''}$A:0{' ' + eos + ':0' if add_eos else ''}"
            pair = f"{single}{' ' + bos + ':1' if add_bos else ''} $B:1{' ' + eos + ':1' if add_eos else ''}"
            specials = ([(bos, backend.token_to_id(bos))] if add_bos else []) + (
                [(eos, backend.token_to_id(eos))] if add_eos else [])
            backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)

        eos_ids: list[int] = []
        for src in (_read_json(path / "generation_config.json"), _read_json(path / "config.json")):
            v = src.get("eos_token_id")
            if v is None and isinstance(src.get("text_config"), dict):
                v = src["text_config"].get("eos_token_id")
            eos_ids += [int(x) for x in (v if isinstance(v, list) else [v]) if x is not None]

        template = tcfg.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        jinja_file = path / "chat_template.jinja"
        if template is None and jinja_file.is_file():
            template = jinja_file.read_text()
        return cls(backend, tcfg, tuple(dict.fromkeys(eos_ids)), template)

    # ---- ids ---------------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._tk.get_vocab_size(with_added_tokens=True)

    def same_vocabulary(self, other: "Tokenizer") -> bool:
        """Whether both map every token string to the same id (a draft model must share the target's)."""
        return self._tk.get_vocab(with_added_tokens=True) == other._tk.get_vocab(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tk.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tk.id_to_token(token_id)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tk.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        return [e.ids for e in self._tk.encode_batch(texts, add_special_tokens=add_special_tokens)]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        text = self._tk.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if self.clean_up_tokenization_spaces:
            for old, new in _CLEANUPS:
                text = text.replace(old, new)
        return text

    def decode_token_bytes(self, token_id: int) -> bytes:
        """Raw bytes one token contributes to the text (b"" for special tokens and unknown ids).

        Byte-level BPE tokens map back through the GPT-2 byte table; SentencePiece-style vocabularies use "▁" for
        a space and "<0xNN>" byte-fallback pieces. Used to match generated bytes against choices/stop strings.
        """
        tok = self._tk.id_to_token(int(token_id))
        if tok is None or token_id in self.special_token_ids:
            return b""
        table = _byte_decoder()
        if all(ch in table for ch in tok):
            return bytes(table[ch] for ch in tok)
        if len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
            return bytes([int(tok[3:5], 16)])
        return tok.replace("▁", " ").encode("utf-8")

    # ---- chat --------------------------------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            **kwargs: Any) -> str:
        """Render ``messages`` ([{"role": ..., "content": ...}]) with the checkpoint's chat template."""
        if not self.chat_template:
            raise ValueError("this checkpoint has no chat template (tokenizer_config.json has no chat_template)")
        variables = dict(bos_token=self.bos_token or "", eos_token=self.eos_token or "",
                         pad_token=self.pad_token, unk_token=self.unk_token)
        variables.update(kwargs)
        return _compile_template(self.chat_template).render(
            messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt, **variables)

    def encode_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a rendered chat. The template writes BOS itself, so none is added on top (as in HF)."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt), add_special_tokens=False)

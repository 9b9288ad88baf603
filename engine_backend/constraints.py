"""Choice-constrained decoding: the output is exactly one of a list of strings.

The choices are tokenized and put in a trie; at each step only the children of the
current node may be sampled. A node that ends a choice and has no children finishes
the request; one that ends a choice and also continues (``yes`` vs ``yes!``) allows
EOS as the way to stop there.

Every output constraint speaks the same protocol to the engine and the sampler:
``start()`` -> a request's state, ``mask_rows(logits, states)`` sets what the states
forbid to -inf, ``step(state, token)`` -> (next state, output complete). ``bounded``
says whether the constraint itself bounds the output's length (a finite choice list
does; a grammar leaves it to ``max_tokens``). ``draft_step(state, token)`` is the state
after a speculative token the constraint allows without completing the output, or None
(the draft is cut there). ``engine_backend.grammar`` is the other kind.
"""
from __future__ import annotations

import torch


class _Node:
    __slots__ = ("children", "terminal")

    def __init__(self):
        self.children: dict[int, _Node] = {}
        self.terminal = False


class ChoiceTrie:
    bounded = True

    def __init__(self, choices: list[str], tokenizer):
        self.root = _Node()
        self.max_len = 0
        for choice in choices:
            ids = tokenizer.encode(choice, add_special_tokens=False)
            if not ids:
                raise ValueError(f"choice {choice!r} tokenizes to nothing")
            node = self.root
            for t in ids:
                node = node.children.setdefault(t, _Node())
            node.terminal = True
            self.max_len = max(self.max_len, len(ids))
        self.eos_ids = list(tokenizer.eos_token_ids)

    def allowed(self, node: _Node) -> list[int]:
        ids = list(node.children)
        if node.terminal:
            ids.extend(self.eos_ids)
        return ids

    def advance(self, node: _Node, token: int) -> _Node | None:
        """The next node, or None when ``token`` is EOS ending a complete choice."""
        return node.children.get(token)

    def mask_row(self, logits_row: torch.Tensor, node: _Node) -> None:
        keep = torch.tensor(self.allowed(node), device=logits_row.device)
        kept = logits_row[keep].clone()
        logits_row.fill_(float("-inf"))
        logits_row[keep] = kept

    # -- the constraint protocol --------------------------------------------------------------------------
    def start(self) -> _Node:
        return self.root

    def mask_rows(self, logits: torch.Tensor, nodes: list) -> None:
        for i, node in enumerate(nodes):
            self.mask_row(logits[i], node)

    def draft_step(self, node: _Node, token: int) -> _Node | None:
        nxt = node.children.get(token)
        return None if nxt is None or (nxt.terminal and not nxt.children) else nxt

    def step(self, node: _Node, token: int) -> tuple[_Node | None, bool]:
        nxt = self.advance(node, token)
        # EOS after a complete choice, or a choice that cannot go on
        return nxt, nxt is None or (nxt.terminal and not nxt.children)

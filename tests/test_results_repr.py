"""Notebook display of every result (issue 24, item 6): a short ``__repr__`` (class name, headline,
tensor shapes, never tensor contents) and ``_repr_html_`` (headline and the first rows of
``to_frame()``, escaped)."""

from __future__ import annotations

import dataclasses
import html
from typing import Any

import pandas as pd
import torch

from lensworks._results import Result
from lensworks.model import processing_state


@dataclasses.dataclass(frozen=True)
class _Toy(Result):
    scores: torch.Tensor
    parts: dict
    note: str
    processing: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_frame(self):
        return pd.DataFrame({"label": [f"<b>{i}</b>" for i in range(20)], "value": list(range(20))})

    def caption(self) -> str:
        return "toy"

    def headline(self) -> str | None:
        return "Head <L0H1> & friends"


@dataclasses.dataclass(frozen=True)
class _Own(_Toy):
    def __repr__(self) -> str:
        return "own"


@dataclasses.dataclass(frozen=True)
class _Child(_Own):
    extra: int = 0


@dataclasses.dataclass(frozen=True)
class _Broken(_Toy):
    def headline(self) -> str | None:
        raise ValueError("no")

    def to_frame(self):
        raise NotImplementedError


def _toy(model, cls=_Toy):
    big = torch.arange(10_000.0).reshape(100, 100)
    return cls(scores=big, parts={"a": torch.zeros(3), "b": torch.ones(2, 2)}, note="n",
               processing=processing_state(model))


def test_repr_is_short_and_shows_shapes_not_contents(attn_model):
    text = repr(_toy(attn_model))
    assert text.startswith("_Toy('Head <L0H1> & friends'")
    assert "scores=Tensor[100, 100]" in text and "parts={a: Tensor[3], b: Tensor[2, 2]}" in text
    assert "tensor(" not in text and "9999" not in text and len(text) < 300


def test_a_subclass_keeps_its_own_repr(attn_model):
    assert repr(_toy(attn_model, _Own)) == "own"
    assert repr(_toy(attn_model, _Child)) == "own"  # inherited from a class that defined it


def test_repr_html_has_the_headline_and_the_first_rows_escaped(attn_model):
    page = _toy(attn_model)._repr_html_()
    assert html.escape("Head <L0H1> & friends") in page and "<L0H1>" not in page
    assert "&lt;b&gt;7&lt;/b&gt;" in page and "&lt;b&gt;8&lt;/b&gt;" not in page  # 8 rows
    assert "12 more rows" in page and "<table" in page


def test_display_never_fails(attn_model):
    res = _toy(attn_model, _Broken)
    assert "no headline: ValueError" in repr(res)
    assert "<table" not in res._repr_html_()


def test_real_results(attn_model):
    from lensworks.causal.dla import direct_logit_attribution
    from lensworks.causal.path import path_patching
    from lensworks.circuits import copying_scores

    for res in (copying_scores(attn_model, baseline_samples=2),
                direct_logit_attribution(attn_model, torch.tensor([[1, 2, 3, 4]]), 5, wrong_tokens=6),
                path_patching(attn_model, torch.tensor([[1, 2, 3, 4]]), torch.tensor([[1, 7, 3, 4]]), "each",
                              "logits", "logit_diff", answer_tokens=5, wrong_tokens=6)):
        text = repr(res)
        assert text.startswith(type(res).__name__ + "(") and "tensor(" not in text and len(text) < 500
        assert res._repr_html_().startswith(f"<div><p><b>{type(res).__name__}</b>")

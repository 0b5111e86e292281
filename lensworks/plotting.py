"""Plotly figure builders shared by the results. Library code imports plotly only in plotting
modules (this one, :mod:`lensworks._figures` and ``lensworks/<area>/_plots.py``); nothing here
displays a figure itself."""

from __future__ import annotations

from typing import Any, Sequence

from lensworks._figures import add_reference, escape_label, figures_to_html, head_heatmap, reference_title

__all__ = ["head_heatmap", "figures_to_html", "escape_label", "attention_explorer", "add_reference", "reference_title"]


def attention_explorer(
    model: Any,
    data: Any,
    *,
    max_tokens: int = 48,
    max_prompts: int = 4,
    heads: Sequence[tuple[int, int]] | None = None,
    prepend_bos: bool | None = None,
    cache: Any = None,
    view: str = "menu",
    layer: int | None = None,
    prompt: int = 0,
) -> Any:
    """The attention pattern of any head on any of the given prompts: one at a time from a dropdown,
    or every head of a layer at once.

    ``view="menu"`` (the default): one heatmap (destination tokens down, source tokens across,
    token strings on both axes; hover shows both tokens and the weight) and a dropdown over every
    (prompt, layer, head). ``view="grid"``: small multiples, one heatmap per head of ``layer`` on
    prompt ``prompt``, as CircuitsVis's ``attention_heads`` shows them; hover names the query and
    key tokens and the weight; ``layer=None`` adds a menu over the layers. Self-contained plotly:
    it works offline in Jupyter, VS Code and the HTML report (plotly.js is inlined, never fetched).

    Args:
        model: The model.
        data: Strings or a ``[batch, pos]`` token tensor.
        max_tokens: Tokens kept per prompt (the first ones).
        max_prompts: Prompts kept.
        heads: ``(layer, head)`` pairs to offer (default: every head).
        prepend_bos: Prepend BOS to strings (default: the model's setting).
        cache: The attention patterns of ``data`` already computed (an ``ActivationCache`` from
            ``model.run_with_cache(tokens)`` or a ``{hook name: pattern}`` dict): the model does not
            run (see :func:`lensworks.circuits.attention_patterns`).
        view: ``"menu"`` (one head at a time) or ``"grid"`` (every head of a layer at once).
        layer: The grid's layer (None: every layer, with a menu); ``view="grid"`` only.
        prompt: The grid's prompt (an index into the prompts kept); ``view="grid"`` only.

    Returns:
        A plotly Figure: :func:`lensworks.circuits.attention_patterns` computes the patterns (an
        ``AttentionPatterns`` result); its ``figure()`` or ``grid_figure(prompt, layer)`` draws them.

    Example:
        >>> fig = attention_explorer(zoo.load("char-mlp"), ["def f(x):", "import os"])
        >>> type(fig).__name__
        'Figure'
        >>> grid = attention_explorer(model, torch.tensor([[0, 5, 6, 7, 5, 6]]), view="grid", layer=1)
        >>> [trace.name for trace in grid.data]  # one heatmap per head of layer 1
        ['L1H0', 'L1H1', 'L1H2', 'L1H3']
    """
    from lensworks.circuits.attention import attention_patterns
    from lensworks.model import LensworksError

    if view not in ("menu", "grid"):
        raise LensworksError(f"view must be 'menu' or 'grid', got {view!r}")
    if view == "menu" and (layer is not None or prompt != 0):
        raise LensworksError("layer= and prompt= choose what the grid shows; pass view='grid' with them")
    res = attention_patterns(model, data, max_tokens=max_tokens, max_prompts=max_prompts, heads=heads,
                             prepend_bos=prepend_bos, cache=cache)
    return res.figure() if view == "menu" else res.grid_figure(prompt=prompt, layer=layer)

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
) -> Any:
    """The attention pattern of any head on any of the given prompts, chosen from a dropdown.

    One heatmap (destination tokens down, source tokens across, token strings on both axes;
    hover shows both tokens and the weight) and a dropdown over every (prompt, layer, head).
    Self-contained plotly: it works offline in Jupyter, VS Code and the HTML report.

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

    Returns:
        A plotly Figure: :func:`lensworks.circuits.attention_patterns` computes the patterns (an
        ``AttentionPatterns`` result) and its ``figure()`` draws them.

    Example:
        >>> fig = attention_explorer(zoo.load("char-mlp"), ["def f(x):", "import os"])
        >>> type(fig).__name__
        'Figure'
    """
    from lensworks.circuits.attention import attention_patterns

    return attention_patterns(model, data, max_tokens=max_tokens, max_prompts=max_prompts, heads=heads,
                              prepend_bos=prepend_bos, cache=cache).figure()

"""What the lensworks-format demo models learned: the measurements stored in ``recipe.json``.

``induction_metrics`` (``induction-2l``: attention at the induction offset and the loss on each
copy of a repeated sequence) and ``char_metrics`` / ``char_loss`` (``char-mlp``: held-out loss
against count models). The data helpers they use live in :mod:`lensworks.zoo.recipes`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from lensworks.model import HookedTransformer, LensworksError, hook_name, model_facts
from lensworks.zoo._data import CHAR_VOCAB, char_heldout, char_tokens, corpus, repeated_tokens

__all__ = ["induction_metrics", "char_loss", "char_metrics"]


@torch.inference_mode()
def induction_metrics(model: HookedTransformer, *, n: int = 25, batch_size: int = 64, seed: int = 1234) -> dict[str, Any]:
    """Attention and loss on repeated random sequences (BOS + random n tokens, repeated once).

    previous-token score of a head: mean attention from position t to t-1 over t = 1..2n;
    induction score: mean attention from t to t-n+1 over the second copy (t = n+1..2n);
    loss on each copy: next-token cross-entropy predicting copy positions 2..n (the first
    token of each copy is unpredictable).

    Example:
        >>> induction_metrics(zoo.load("induction-2l"))["loss_second_copy"] < 1.0
        True
    """

    g = torch.Generator().manual_seed(seed)
    toks = repeated_tokens(g, batch_size, n, model.cfg.d_vocab - 1).to(model_facts(model).device)
    logits, cache = model.run_with_cache(toks, names_filter=lambda h: h.endswith("hook_pattern"))
    logp = logits.float().log_softmax(-1)
    nll = -logp[:, :-1].gather(-1, toks[:, 1:, None])[..., 0]  # nll[:, t] predicts token t+1
    first = nll[:, 1:n].mean().item()  # predicts positions 2..n
    second = nll[:, n + 1 : 2 * n].mean().item()  # predicts positions n+2..2n
    pos = torch.arange(1, 2 * n + 1, device=toks.device)
    sec = torch.arange(n + 1, 2 * n + 1, device=toks.device)
    prev, induct = [], []
    for layer in range(model.cfg.n_layers):
        pat = cache[hook_name("pattern", layer)].float()  # batch head q k
        prev.append(pat[:, :, pos, pos - 1].mean(dim=(0, 2)).tolist())
        induct.append(pat[:, :, sec, sec - n + 1].mean(dim=(0, 2)).tolist())
    return {
        "n": n,
        "batch_size": batch_size,
        "seed": seed,
        "loss_first_copy": first,
        "loss_second_copy": second,
        "loss_uniform": math.log(model.cfg.d_vocab - 1),
        "previous_token_score": prev,
        "induction_score": induct,
    }


@torch.inference_mode()
def char_loss(model: HookedTransformer, text: str, *, n_windows: int = 64, seed: int = 0) -> float:
    """Mean next-character loss (nats/char) of ``model`` on ``n_windows`` BOS-prefixed windows of ``text``.

    Windows of ``n_ctx - 1`` characters start at evenly spaced offsets; every character after
    the BOS is predicted.

    Example:
        >>> char_loss(zoo.load("char-mlp"), char_heldout(10_000), n_windows=8) < 2.0
        True
    """

    data = char_tokens(text)
    width = model.cfg.n_ctx - 1
    if len(data) < width + 1:
        raise LensworksError(f"need at least {width + 1} characters of text, got {len(data)}")
    starts = torch.linspace(0, len(data) - width, n_windows).long()
    windows = torch.stack([data[s : s + width] for s in starts.tolist()])
    toks = torch.cat([torch.zeros(n_windows, 1, dtype=torch.long), windows], dim=1).to(model_facts(model).device)  # <bos> is id 0
    logits = model(toks)
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), toks[:, 1:].reshape(-1)).item()


def _ngram_losses(train_text: str, test_text: str, n_symbols: int) -> dict[str, float]:
    """Held-out cross-entropy of smoothed unigram, bigram and trigram count models."""
    from collections import Counter

    uni = Counter(train_text)
    bi = Counter(zip(train_text, train_text[1:]))
    tri = Counter(zip(train_text, train_text[1:], train_text[2:]))
    total = len(train_text)

    def p1(c: str) -> float:
        return (uni[c] + 1) / (total + n_symbols)

    def p2(a: str, c: str) -> float:
        return (bi[(a, c)] + 0.1 * n_symbols * p1(c)) / (uni[a] + 0.1 * n_symbols)

    def p3(a: str, b: str, c: str) -> float:
        return (tri[(a, b, c)] + p2(b, c)) / (bi[(a, b)] + 1)

    t = test_text
    return {
        "unigram": sum(-math.log(p1(c)) for c in t[2:]) / (len(t) - 2),
        "bigram": sum(-math.log(p2(a, c)) for a, c in zip(t[1:], t[2:])) / (len(t) - 2),
        "trigram": sum(-math.log(p3(a, b, c)) for a, b, c in zip(t, t[1:], t[2:])) / (len(t) - 2),
    }


@torch.inference_mode()
def char_metrics(model: HookedTransformer, *, n_windows: int = 256, prompt: str = "    def __init__(self") -> dict[str, Any]:
    """What ``char-mlp`` learned: held-out loss and accuracy, loss by context position, n-gram baselines.

    Held-out text is :func:`char_heldout` (100,000 characters); ``n_windows`` evenly spaced
    BOS-prefixed windows of ``n_ctx - 1`` characters are scored. Baselines are count models
    (add-one unigram; bigram and trigram backed off to the lower order) fitted on the training
    text and scored on the whole held-out text.

    Example:
        >>> # about 30 s on two CPU cores (count models over the 1 MB training text): not run in the doctests
        >>> char_metrics(zoo.load("char-mlp"))["heldout_loss"] < 2.0  # doctest: +SKIP
        True
    """


    held = char_heldout(100_000)
    train_text = corpus(1_000_000)
    data = char_tokens(held)
    width = model.cfg.n_ctx - 1
    starts = torch.linspace(0, len(data) - width, n_windows).long()
    facts = model_facts(model)
    toks = torch.cat(  # the zoo's character vocabulary has <bos> at id 0, with or without a tokenizer attached
        [torch.zeros(n_windows, 1, dtype=torch.long), torch.stack([data[s : s + width] for s in starts.tolist()])], dim=1
    ).to(facts.device)
    logits = model(toks)[:, :-1].float()
    target = toks[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none").view(target.shape)
    # greedy completion of a prompt, as a qualitative check
    ids = torch.cat([torch.zeros(1, dtype=torch.long), char_tokens(prompt)])[None].to(facts.device)
    for _ in range(60):
        nxt = model(ids[:, -model.cfg.n_ctx :])[0, -1].argmax()
        ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    completion = "".join(CHAR_VOCAB[i] for i in ids[0, 1 + len(prompt) :].tolist())
    return {
        "heldout_loss": nll.mean().item(),
        "heldout_accuracy": (logits.argmax(-1) == target).float().mean().item(),
        "heldout_loss_positions_1_8": nll[:, :8].mean().item(),
        "heldout_loss_positions_64_127": nll[:, 63:].mean().item(),
        "train_text_loss": char_loss(model, train_text, n_windows=n_windows),
        "uniform_loss": math.log(len(CHAR_VOCAB) - 1),
        "ngram_heldout_loss": _ngram_losses(train_text, held, len(CHAR_VOCAB) - 1),
        "heldout": f"corpus(None)[1_000_000:1_100_000]; {n_windows} evenly spaced windows of {width} characters after <bos>",
        "greedy_completion": {"prompt": prompt, "completion": completion},
    }

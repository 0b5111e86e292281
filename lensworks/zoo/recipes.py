"""The recipes that trained the bundled demo models, and the measurements stored beside them.

Each recipe is seeded and runs on CPU; with the same seed, thread count and torch version it
produces the same weights. ``python -m lensworks.zoo train NAME --out DIR`` runs one and
writes the checkpoint (with :func:`lensworks.model.save_model`) plus ``recipe.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from jaxtyping import Int
from torch import Tensor

from lensworks._rng import seeded_rng
from lensworks.model import HookedTransformer, LensworksError, save_model
from lensworks.model._io import write_atomic
from lensworks.zoo._training import optimise, run_with_threads, training_info
from lensworks.zoo._data import CHAR_VOCAB, INDUCTION_VOCAB, char_heldout, char_tokens, corpus, repeated_tokens
from lensworks.zoo.metrics import char_loss, char_metrics, induction_metrics

__all__ = [
    "Recipe",
    "RECIPES",
    "INDUCTION_VOCAB",
    "CHAR_VOCAB",
    "train",
    "train_and_save",
    "induction_batch",
    "repeated_tokens",
    "induction_metrics",
    "char_tokens",
    "char_loss",
    "char_heldout",
    "char_metrics",
]

# --------------------------------------------------------------------------- vocabularies

# (defined in lensworks.zoo._data, beside the corpus they read)

# --------------------------------------------------------------------------- recipes


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of one demo model and how to train it.

    Attributes:
        name: The zoo name.
        cfg: HookedTransformerConfig fields.
        steps, batch_size, lr, warmup, weight_decay, seed: Optimisation settings (AdamW,
            linear warm-up then cosine decay to 10% of ``lr``, gradient norm clipped at 1).
        summary, training_data, learned: Prose for :func:`lensworks.zoo.describe`.
        fold_ln: Fold LayerNorm weights (and centre writing weights / unembedding) into the
            neighbouring matrices before saving, so weight-based scores see the real circuit.
        save_dtype: dtype the weights are written in (``load_model`` upcasts float16).
    """

    name: str
    cfg: dict[str, Any]
    steps: int
    batch_size: int
    lr: float
    warmup: int
    weight_decay: float
    seed: int
    summary: str
    training_data: str
    learned: str
    fold_ln: bool = False
    save_dtype: str = "float32"

    def hyper_parameters(self) -> dict[str, Any]:
        """All settings as a JSON-ready dict."""
        out = dict(self.cfg)
        out.update(
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            warmup=self.warmup,
            weight_decay=self.weight_decay,
            seed=self.seed,
            optimizer="AdamW(betas=(0.9, 0.99)), cosine decay to 0.1*lr, grad-norm clip 1.0",
            fold_ln_before_saving=self.fold_ln,
            save_dtype=self.save_dtype,
        )
        return out


INDUCTION = Recipe(
    name="induction-2l",
    cfg=dict(
        n_layers=2,
        d_model=64,
        n_heads=4,
        d_head=16,
        n_ctx=64,
        d_vocab=len(INDUCTION_VOCAB),
        attn_only=True,
        normalization_type=None,
        positional_embedding_type="standard",
        act_fn="gelu",
    ),
    steps=3000,
    batch_size=32,
    lr=3e-3,
    warmup=100,
    weight_decay=0.0,
    seed=0,
    summary="2-layer attention-only transformer (no LayerNorm) with previous-token heads in layer 0 and induction heads in layer 1.",
    training_data=(
        "Synthetic sequences of 64 tokens: <bos> then 63 syllable tokens drawn uniformly from 150. Even rows "
        "repeat a random block of 4-31 tokens until the context is full, after a random prefix of 0-15 tokens; "
        "odd rows are uniform random tokens into which 1-3 random spans of 4-21 tokens were copied from "
        "earlier positions. Next-token cross-entropy on every position."
    ),
    learned=(
        "Layer-0 heads attend to the previous token; layer-1 heads attend to the token after the "
        "previous occurrence of the current token (induction) and copy it, so on a repeated random "
        "sequence the loss on the second copy falls far below the loss on the first (uniform guessing: "
        "log 150 = 5.01 nats)."
    ),
)

CHAR_MLP = Recipe(
    name="char-mlp",
    cfg=dict(
        n_layers=4,
        d_model=128,
        n_heads=4,
        d_head=32,
        d_mlp=512,
        n_ctx=128,
        d_vocab=len(CHAR_VOCAB),
        attn_only=False,
        normalization_type="LN",
        positional_embedding_type="standard",
        act_fn="gelu",
    ),
    steps=2000,
    batch_size=32,
    lr=2e-3,
    warmup=100,
    weight_decay=0.05,
    seed=0,
    summary="4-layer character-level transformer with MLPs, trained on Python standard-library source.",
    training_data=(
        "lensworks.zoo.corpus(1_000_000): the first 1,000,000 characters of the stdlib corpus. Each example is "
        "<bos> followed by a 127-character window at a uniformly random offset; next-character cross-entropy. "
        "Held out: the corpus characters after the first 1,000,000 (other stdlib modules)."
    ),
    learned=(
        "Next-character prediction of Python source: about 1.23 nats/char on held-out stdlib modules, "
        "below a trigram count model (1.80) and far below uniform guessing (4.56); it uses long context "
        "(about 1.7 nats/char at context positions 1-8, 1.2 at positions 64-127). See metrics."
    ),
    save_dtype="float16",
)

#: Recipes by zoo name.
RECIPES: dict[str, Recipe] = {r.name: r for r in (INDUCTION, CHAR_MLP)}

# --------------------------------------------------------------------------- data


def induction_batch(
    generator: torch.Generator, batch_size: int, seq_len: int = 128, n_tokens: int = len(INDUCTION_VOCAB) - 1
) -> Int[Tensor, "batch pos"]:
    """A training batch for ``induction-2l``: BOS (id 0) then ``seq_len - 1`` tokens in ``1..n_tokens``.

    Half the rows repeat a random block (length 4-40) after a random prefix (0-20 tokens); the
    other half are random with 1-3 spans (length 4-24) copied from earlier positions.

    Example:
        >>> toks = induction_batch(torch.Generator().manual_seed(0), 2, 16)
        >>> toks.shape, int(toks[0, 0])
        (torch.Size([2, 16]), 0)
    """
    body = seq_len - 1
    g = generator

    def randint(lo: int, hi: int) -> int:  # inclusive bounds
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    rows = torch.randint(1, n_tokens + 1, (batch_size, body), generator=g)
    for i in range(batch_size):
        if i % 2 == 0:
            prefix = randint(0, min(20, body // 4))
            n = randint(4, max(4, min(40, (body - prefix) // 2)))
            block = rows[i, prefix : prefix + n].clone()
            reps = math.ceil((body - prefix) / n)
            rows[i, prefix:] = block.repeat(reps)[: body - prefix]
        else:
            for _ in range(randint(1, 3)):
                m = randint(4, min(24, body // 3))
                src = randint(0, body - 2 * m)
                dst = randint(src + m, body - m)
                rows[i, dst : dst + m] = rows[i, src : src + m].clone()
    bos = torch.zeros(batch_size, 1, dtype=torch.long)
    return torch.cat([bos, rows], dim=1)


def _char_batch(data: Tensor, generator: torch.Generator, batch_size: int, n_ctx: int) -> Tensor:
    starts = torch.randint(0, len(data) - (n_ctx - 1), (batch_size,), generator=generator)
    windows = torch.stack([data[s : s + n_ctx - 1] for s in starts.tolist()])
    return torch.cat([torch.zeros(batch_size, 1, dtype=torch.long), windows], dim=1)


# --------------------------------------------------------------------------- training


def _build_model(recipe: Recipe) -> HookedTransformer:
    if HookedTransformer is None:
        raise LensworksError("training a zoo model builds a HookedTransformer, which TransformerLens 4 removed; "
                             "train with TransformerLens 3 (the bundled checkpoints load on both lines)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformer_lens import HookedTransformerConfig

    cfg = HookedTransformerConfig(**recipe.cfg, device="cpu", seed=None)
    with seeded_rng(recipe.seed):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = HookedTransformer(cfg, move_to_device=False)
    return model


def _lr_at(recipe: Recipe, step: int, steps: int) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    frac = (step - recipe.warmup) / max(1, steps - recipe.warmup)
    return recipe.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def train(
    name: str,
    *,
    steps: int | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    recipe: Recipe | None = None,
    threads: int | None = 1,
) -> tuple[HookedTransformer, dict[str, Any]]:
    """Train one zoo model from scratch on CPU, deterministically.

    Global torch RNG state is left untouched (all randomness comes from seeded generators).
    Training runs with ``threads`` torch threads (restored afterwards): with one thread the
    weights are identical run after run; with more, CPU kernels (the embedding backward
    among them) add in a varying order and the weights drift apart by about 1e-8.

    Args:
        name: ``"induction-2l"`` or ``"char-mlp"``.
        steps: Override the recipe's number of optimisation steps (the learning-rate schedule
            is stretched to fit).
        progress: Show a tqdm bar (None: only on a terminal).
        log: Called with a line every few hundred steps.
        recipe: Train this variant of the named recipe instead (e.g. made with
            ``dataclasses.replace(RECIPES[name], lr=3e-3)``).
        threads: torch CPU threads while training (None: leave the current setting).

    Returns:
        ``(model, info)``: the trained model in eval mode (LayerNorm folded when the recipe
        says so) and a JSON-ready dict with hyper-parameters, ``final_loss`` (mean training
        loss over the last 50 steps), ``metrics``, ``train_time_s``, ``torch_version``.

    Example:
        >>> model, info = train("induction-2l", steps=2)
        >>> info["steps"], model.cfg.n_layers
        (2, 2)
    """
    if not isinstance(name, str) or name not in RECIPES:
        raise LensworksError(f"unknown zoo model {name!r}; the recipes are {list(RECIPES)}")
    recipe = RECIPES[name] if recipe is None else recipe
    return run_with_threads(steps, recipe.steps, threads, lambda n: _train(name, recipe, n, progress, log))


def _train(
    name: str, recipe: Recipe, steps: int, progress: bool | None, log: Callable[[str], None] | None
) -> tuple[HookedTransformer, dict[str, Any]]:
    model = _build_model(recipe)
    model.train()
    gen = torch.Generator().manual_seed(recipe.seed + 1)
    n_ctx = recipe.cfg["n_ctx"]
    if name == "char-mlp":
        data = char_tokens(corpus(1_000_000))
        make_batch = lambda: _char_batch(data, gen, recipe.batch_size, n_ctx)  # noqa: E731
    else:
        make_batch = lambda: induction_batch(gen, recipe.batch_size, n_ctx, recipe.cfg["d_vocab"] - 1)  # noqa: E731
    losses, wall = optimise(
        model, steps=steps, lr=recipe.lr, lr_at=lambda step: _lr_at(recipe, step, steps),
        weight_decay=recipe.weight_decay, betas=(0.9, 0.99), make_batch=make_batch,
        loss_of=lambda toks: model(toks, return_type="loss"), desc=f"train {name}", progress=progress, log=log,
    )
    model.eval()
    if recipe.fold_ln:
        model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    info = training_info(name, recipe, steps, losses, wall)
    if recipe.save_dtype == "float16":
        # round to what will be stored, so the metrics describe the weights users load
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.half().float())
    info["metrics"] = induction_metrics(model) if name == "induction-2l" else char_metrics(model)
    return model, info


def train_and_save(
    name: str,
    out: str | Path,
    *,
    steps: int | None = None,
    threads: int | None = 1,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Train a zoo model and write it to ``out`` (``save_model`` files plus ``recipe.json``).

    Example:
        >>> train_and_save("induction-2l", "out/zoo/induction-2l", steps=2, log=None)  # the recipe runs 3,000
        PosixPath('out/zoo/induction-2l')
    """
    model, info = train(name, steps=steps, log=log, threads=threads)
    recipe = RECIPES[name]
    if recipe.save_dtype == "float16":
        model = model.to(torch.float16)
    out = save_model(model, out, vocab=INDUCTION_VOCAB if name == "induction-2l" else CHAR_VOCAB)
    cfg_file = out / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["dtype"] = "float32"  # stored weights may be float16; load_model upcasts to this
    write_atomic(cfg_file, json.dumps(cfg, indent=1, sort_keys=True))
    write_atomic(out / "recipe.json", json.dumps(info, indent=1))
    return out

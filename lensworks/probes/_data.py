"""The data side of the probes: tokens, the train/held-out plan with targets, batched capture.

Nothing here fits a probe: :func:`make_plan` decides which (sequence, position) rows train and
test each offset and what their target classes are, and :func:`run_batches` streams the
model over sequences and hands each batch's captured activations to a callback.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence, Union

import torch
from jaxtyping import Bool, Int
from torch import Tensor
from tqdm.auto import tqdm

from lensworks._dist import is_main
from lensworks.model import HookedTransformer, LensworksError, as_tokens
from lensworks.model._compat import capture_hooks, require_finite_parameters

__all__ = ["Data", "Plan", "make_plan", "model_tokens", "run_batches", "sequences_with_rows", "validation_rows"]

#: What the probes accept as data: one string, several strings, or a ``[batch, pos]`` token tensor.
Data = Union[str, Sequence[str], Tensor]

#: Called once per batch with the sequence indices and the activations per ``(layer, stream)``.
BatchFn = Callable[[Tensor, dict[tuple[int, str], Tensor]], None]


def model_tokens(model: HookedTransformer, data: Data, *, what: str = "data") -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch"]]:
    """Tokens and lengths for strings (each tokenized on its own, right-padded) or a tensor.

    Right padding never changes the activations of real positions in a causal model, and the
    padded positions are masked out by their length.

    Example:
        >>> toks, lengths = model_tokens(zoo.load("char-mlp"), ["ab", "abc"])  # BOS first
        >>> lengths.tolist()
        [3, 4]
    """
    if isinstance(data, Tensor):
        toks = as_tokens(model, data, what=what)
        return toks, torch.full((toks.shape[0],), toks.shape[1], dtype=torch.long, device=toks.device)
    if isinstance(data, str):
        data = [data]
    data = list(data)
    if not data:
        raise LensworksError(f"{what}: empty data set; expected at least one string or a [batch, pos] token tensor")
    rows = [as_tokens(model, s, what=what)[0] for s in data]
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    toks = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long, device=rows[0].device)
    for i, r in enumerate(rows):
        toks[i, : len(r)] = r
    return toks, lengths.to(toks.device)


@dataclasses.dataclass
class Plan:
    """Which (sequence, position) rows train and test each offset, with their targets."""

    tokens: Tensor  # [n, P]
    train: list[Tensor]  # per offset, bool [n, P]
    test: list[Tensor]
    target: list[Tensor]  # per offset, class index [n, P] (-1 where invalid)
    shuffled: list[Tensor]  # per offset, shuffled class index on train rows
    classes: Tensor
    chance: list[float]
    split: str


def make_plan(
    tokens: Int[Tensor, "n pos"],
    lengths: Int[Tensor, "n"],
    offsets: Sequence[int],
    bos: int | None,
    test_fraction: float,
    seed: int,
) -> Plan:
    """Split rows into training and held-out parts and give each offset its target classes.

    Sequences are split at random (positions, for a single sequence). The target of row
    ``(i, p)`` at offset ``o`` is the token at ``p + o``; rows whose target lies outside the
    sequence or is BOS are left out. Classes are every token seen as a target; the training
    labels are also shuffled once (the shuffled-label control), and ``chance`` is the
    held-out accuracy of the majority training class.

    Args:
        tokens: ``[n, pos]`` right-padded tokens.
        lengths: Real length of each sequence.
        offsets: Input offsets.
        bos: BOS token id (never a target), or None.
        test_fraction: Share of sequences (or positions) held out.
        seed: Seed of the split and the shuffle.

    Returns:
        A :class:`Plan`.

    Example:
        >>> plan = make_plan(torch.randint(1, 9, (10, 6)), torch.full((10,), 6), (0, -1), None, 0.2, 0)
        >>> plan.split, len(plan.train)
        ('sequences', 2)
    """
    n, P = tokens.shape
    dev = tokens.device
    gen = torch.Generator().manual_seed(seed)
    pos = torch.arange(P, device=dev)[None, :].expand(n, P)
    inside = pos < lengths[:, None]
    max_len = int(lengths.max())
    if n >= 2:
        n_test = min(n - 1, max(1, round(test_fraction * n)))
        perm = torch.randperm(n, generator=gen)
        test_seq = torch.zeros(n, dtype=torch.bool)
        test_seq[perm[:n_test]] = True
        test_rows = test_seq.to(dev)[:, None].expand(n, P)
        split = "sequences"
    else:
        n_test = min(P - 1, max(1, round(test_fraction * P)))
        if P < 2:
            raise LensworksError("a single sequence of one token cannot be split into training and held-out positions")
        perm = torch.randperm(P, generator=gen)
        test_pos = torch.zeros(P, dtype=torch.bool)
        test_pos[perm[:n_test]] = True
        test_rows = test_pos.to(dev)[None, :].expand(n, P)
        split = "positions"
    valids, targets_tok = [], []
    for o in offsets:
        src = pos + o
        ok = inside & (src >= 0) & (src < lengths[:, None])
        tgt = tokens.gather(1, src.clamp(0, P - 1))
        if bos is not None:
            ok = ok & (tgt != bos)
        valids.append(ok)
        targets_tok.append(torch.where(ok, tgt, torch.full_like(tgt, -1)))
    all_t = torch.cat([t[v] for t, v in zip(targets_tok, valids)])
    classes = torch.unique(all_t) if all_t.numel() else torch.zeros(0, dtype=torch.long, device=dev)
    lut = torch.full((int(tokens.max()) + 1,), -1, dtype=torch.long, device=dev)
    lut[classes] = torch.arange(len(classes), device=dev)
    plan = Plan(tokens, [], [], [], [], classes, [], split)
    for o, ok, tt in zip(offsets, valids, targets_tok):
        tr, te = ok & ~test_rows, ok & test_rows
        if int(tr.sum()) == 0 or int(te.sum()) == 0:
            raise LensworksError(
                f"offset {o} leaves {int(tr.sum())} training and {int(te.sum())} held-out positions "
                f"(sequences hold at most {max_len} tokens, BOS excluded as a target); "
                "pass longer or more sequences, or smaller offsets"
            )
        cls = torch.where(ok, lut[tt.clamp_min(0)], torch.full_like(tt, -1))
        y = cls[tr]
        shuf = torch.full_like(cls, -1)
        shuf[tr] = y[torch.randperm(len(y), generator=gen).to(dev)]
        counts = torch.bincount(y, minlength=len(classes))
        majority = int(counts.argmax())
        plan.train.append(tr)
        plan.test.append(te)
        plan.target.append(cls)
        plan.shuffled.append(shuf)
        plan.chance.append(float((cls[te] == majority).float().mean()))
    return plan



def validation_rows(plan: Plan, seed: int, fraction: float = 0.2) -> list[Bool[Tensor, "n pos"]]:
    """A validation subset of each offset's training rows (for ``method="auto"``).

    Whole training sequences when there are at least two of them, else random positions.

    Example:
        >>> plan = make_plan(torch.randint(1, 9, (10, 6)), torch.full((10,), 6), (0, -1), None, 0.2, 0)
        >>> val = validation_rows(plan, seed=0)
        >>> all(bool((v & ~t).sum() == 0) for v, t in zip(val, plan.train))
        True
    """
    gen = torch.Generator().manual_seed(seed + 1)
    train_any = torch.stack([t.any(1) for t in plan.train]).any(0)
    seqs = torch.nonzero(train_any).flatten().cpu()
    n, P = plan.tokens.shape
    dev = plan.tokens.device
    if len(seqs) >= 2:
        n_val = min(len(seqs) - 1, max(1, round(fraction * len(seqs))))
        pick = seqs[torch.randperm(len(seqs), generator=gen)[:n_val]]
        rows = torch.zeros(n, dtype=torch.bool)
        rows[pick] = True
        mask = rows.to(dev)[:, None].expand(n, P)
    else:
        mask = (torch.rand(n, P, generator=gen) < fraction).to(dev)
    out = []
    for k, t in enumerate(plan.train):
        v = t & mask
        if int(v.sum()) == 0 or int((t & ~v).sum()) == 0:
            raise LensworksError(
                f"method='auto' needs training rows for both fitting and validation; offset index {k} has "
                f"{int(t.sum())} training rows; pass more data or use method='lda' or 'ridge'"
            )
        out.append(v)
    return out



def sequences_with_rows(rows: Sequence[Bool[Tensor, "n pos"]]) -> Int[Tensor, "m"]:
    """Indices of the sequences that hold a row of any offset's mask.

    Example:
        >>> sequences_with_rows([torch.tensor([[False], [True]])]).tolist()
        [1]
    """
    return torch.nonzero(torch.stack([t.any(1) for t in rows]).any(0)).flatten()


def run_batches(
    model: HookedTransformer,
    tokens: Int[Tensor, "n pos"],
    seq_idx: Int[Tensor, "m"],
    hooks: dict[str, tuple[int, str]],
    stop_at: int | None,
    batch_size: int,
    desc: str,
    progress: bool | None,
    fn: BatchFn,
) -> None:
    """Run the model over ``tokens[seq_idx]`` in batches; call ``fn(idx, {key: acts})``.

    Args:
        model: The model.
        tokens: All sequences.
        seq_idx: Which sequences to run, in order.
        hooks: Hook name to the ``(layer, stream)`` key its activation is stored under.
        stop_at: ``stop_at_layer`` of the forward pass (None: run to the end).
        batch_size: Sequences per forward pass.
        desc: Progress-bar label.
        progress: Show a progress bar (None: only on a terminal).
        fn: Called once per batch, inside inference mode.

    Example:
        >>> toks = torch.tensor([[0, 1, 2], [0, 3, 4]])
        >>> run_batches(model, toks, torch.arange(len(toks)), {"blocks.0.hook_resid_pre": (0, "resid_pre")},
        ...             None, 8, "capture", False, lambda idx, store: print(store[(0, "resid_pre")].shape))
        torch.Size([2, 3, 64])
    """
    require_finite_parameters(model)
    disable = None if progress is None else not progress
    starts = range(0, len(seq_idx), batch_size)
    for s in tqdm(starts, desc=desc, disable=True if not is_main() else disable, leave=False):  # rank 0 only
        idx = seq_idx[s : s + batch_size]
        store: dict[tuple[int, str], Tensor] = {}

        def grab(name: str, act: Tensor) -> None:
            store[hooks[name]] = act

        with torch.inference_mode():
            model.run_with_hooks(
                tokens[idx],
                fwd_hooks=capture_hooks(list(hooks), grab),
                stop_at_layer=stop_at,
                return_type=None,
            )
            fn(idx, store)


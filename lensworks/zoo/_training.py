"""The optimisation loop both kinds of zoo recipe share (lensworks-format and Hugging Face models)."""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import Tensor

from lensworks.model import LensworksError

__all__ = ["optimise", "training_info", "run_with_threads"]


def optimise(
    model: torch.nn.Module,
    *,
    steps: int,
    lr: float,
    lr_at: Callable[[int], float],
    weight_decay: float,
    betas: tuple[float, float],
    make_batch: Callable[[], Tensor],
    loss_of: Callable[[Tensor], Tensor],
    desc: str,
    progress: bool | None,
    log: Callable[[str], None] | None,
) -> tuple[list[float], float]:
    """AdamW (weight decay on matrices only), per-step learning rate, gradient norm clipped at 1.

    Returns:
        ``(losses, wall_seconds)``: the training loss of every step and the time taken.

    Example:
        >>> net = torch.nn.Linear(4, 3)
        >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
        >>> def loss(batch):
        ...     return torch.nn.functional.cross_entropy(net(batch), y)
        >>> losses, wall = optimise(net, steps=10, lr=1e-2, lr_at=lambda s: 1e-2, weight_decay=0.0,
        ...                         betas=(0.9, 0.99), make_batch=lambda: x, loss_of=loss, desc="train",
        ...                         progress=False, log=None)
        >>> len(losses), losses[-1] < losses[0]
        (10, True)
    """
    from tqdm.auto import tqdm

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas)
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=desc, disable=progress is False if progress is not None else None)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = loss_of(make_batch())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if log is not None and (step % 250 == 0 or step == steps - 1):
            log(f"step {step} loss {sum(losses[-50:]) / len(losses[-50:]):.4f} elapsed {time.perf_counter() - start:.1f}s")
    return losses, time.perf_counter() - start


def training_info(name: str, recipe: Any, steps: int, losses: list[float], wall: float) -> dict[str, Any]:
    """The JSON-ready record of a run: settings, final loss, loss curve (means over 50 steps), time.

    Example:
        >>> from lensworks.zoo.recipes import RECIPES
        >>> training_info("x", RECIPES["induction-2l"], 2, [2.0, 1.0], 0.5)["final_loss"]
        1.5
    """
    tail = losses[-50:]
    return {
        "name": name,
        "steps": steps,
        "hyper_parameters": {**recipe.hyper_parameters(), "steps": steps},
        "training_data": recipe.training_data,
        "final_loss": sum(tail) / len(tail),
        "loss_curve": [round(sum(losses[i : i + 50]) / len(losses[i : i + 50]), 4) for i in range(0, steps, 50)],
        "train_time_s": round(wall, 1),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }


def run_with_threads(steps: Any, default_steps: int, threads: int | None, fn: Callable[[int], Any]) -> Any:
    """Check ``steps`` and ``threads``, then call ``fn(steps)`` with ``threads`` torch threads,
    restoring the caller's thread count afterwards.

    Example:
        >>> run_with_threads(None, 3, 1, lambda steps: steps)
        3
    """
    steps = default_steps if steps is None else int(steps)
    if steps < 1:
        raise LensworksError(f"steps must be at least 1, got {steps}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise LensworksError(f"threads must be a positive int or None, got {threads!r}")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return fn(steps)
    finally:
        torch.set_num_threads(previous)

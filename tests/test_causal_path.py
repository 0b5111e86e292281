"""Path patching (issue 24, item 3): the planted induction circuit, a naive implementation on every
architecture, the sweep, and the refusals."""

from __future__ import annotations

import pytest
import torch

from archs import ARCHS, arch_model, float_tol
from helpers import planted_induction_model
from lensworks.causal.path import PathPatching, path_patching
from lensworks.model import TL_MAJOR, LensworksError, processing_state


def _planted_prompts():
    g = torch.Generator().manual_seed(0)
    s = torch.randperm(15, generator=g)[:8] + 1
    other = torch.randperm(15, generator=g)[:8] + 1
    return torch.cat([s, s])[None], torch.cat([other, s])[None], int(s[0])


def test_planted_induction_path_goes_through_the_key():
    """L0H0 (previous token) -> L1H0 (induction) is K-composition: patching the sender's path into
    the receiver's key carries the whole corruption; into its query or value, nothing."""
    model = planted_induction_model()
    clean, corrupted, answer = _planted_prompts()
    res = {r: path_patching(model, clean, corrupted, [(0, 0)], r, "prob", answer_tokens=answer)
           for r in [(1, 0, "k"), (1, 0, "q"), (1, 0, "v"), "logits"]}
    k = res[(1, 0, "k")]
    assert k.clean_metric - k.corrupted_metric > 0.05
    assert float(k.normalised()[0]) == pytest.approx(1.0, abs=1e-3)
    for r in [(1, 0, "q"), (1, 0, "v"), "logits"]:  # L0H0 writes nothing W_Q, W_V or W_U read
        assert float(res[r].change[0]) == pytest.approx(0.0, abs=1e-6), r
    sweep = path_patching(model, clean, corrupted, "each", (1, 0, "k"), "prob", answer_tokens=answer)
    grid = sweep.effect_grid()
    assert sweep.sweep and grid.shape == (2, 2) and bool(torch.isnan(grid[1]).all())
    assert float(grid[0, 0]) == pytest.approx(float(k.change[0]), abs=1e-6) and abs(float(grid[0, 1])) < 1e-3
    assert sweep.headline().startswith("Patching L0H0 -> L1H0.k")
    assert sweep.figure().data and len(sweep.to_frame()) == 2 and k.figure().data


# --------------------------------------------------------------------------- naive, on every architecture


def _metric(answer, wrong):
    return lambda logits: logits[:, -1, answer].float() - logits[:, -1, wrong].float()


def _naive(model, clean, caches, senders, receiver, metric):
    """One group, written the textbook way: cache, freeze every head's z at the clean value except the
    senders' (corrupted); for a head receiver, cache its per-head q/k/v *input* (TransformerLens's
    split-qkv-input hooks, ARENA's implementation), put it into a clean run and take the head's z,
    then put that z into a clean run."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    top = L if receiver == "logits" else receiver[0]
    z = lambda l: f"blocks.{l}.attn.hook_z"  # noqa: E731
    cc, kc = caches

    def freeze(l):
        def hook(act, hook):
            out = cc[z(l)].clone()
            for (sl, sh) in senders:
                if sl == l:
                    out[:, :, sh] = kc[z(l)][:, :, sh]
            return out
        return hook

    hooks = [(z(l), freeze(l)) for l in range(top)]
    with torch.no_grad():
        if receiver == "logits":
            return float(metric(model.run_with_hooks(clean, fwd_hooks=hooks)).mean())
        layer, head, which = receiver
        kv = head // (H // model.cfg.n_key_value_heads) if which in "kv" and getattr(model.cfg, "n_key_value_heads", None) else head
        name = f"blocks.{layer}.hook_{which}_input"
        held = {}
        model.set_use_split_qkv_input(True)
        try:
            model.run_with_hooks(clean, fwd_hooks=hooks + [(name, lambda a, hook: held.__setitem__("x", a[:, :, kv].clone()))])

            def put_input(a, hook):
                a = a.clone()
                a[:, :, kv] = held["x"]
                return a

            model.run_with_hooks(clean, fwd_hooks=[(name, put_input),
                                                   (z(layer), lambda a, hook: held.__setitem__("z", a[:, :, head].clone()))])
        finally:
            model.set_use_split_qkv_input(False)

        def put_z(a, hook):
            a = a.clone()
            a[:, :, head] = held["z"]
            return a

        return float(metric(model.run_with_hooks(clean, fwd_hooks=[(z(layer), put_z)])).mean())


@pytest.mark.parametrize("arch", ARCHS)
def test_equals_a_naive_implementation(arch):
    model = arch_model(arch)
    if TL_MAJOR >= 4 and arch in ("attn-only", "char-nl", "gptj"):
        pytest.skip("TransformerLens 4 has no split q/k/v input hooks for this model's attention bridge "
                    "(the naive reference needs them)")
    lo = 1 if model.cfg.d_vocab < 100 else 10
    g = torch.Generator().manual_seed(2)
    clean = torch.randint(lo, model.cfg.d_vocab, (2, 6), generator=g)
    corrupted = clean.clone()
    corrupted[:, 1:4] = torch.randint(lo, model.cfg.d_vocab, (2, 3), generator=g)
    metric = _metric(3, 4)
    groups = [[(0, 1)], [(0, 0), (0, 3)]]
    tol = float_tol(model, 1e-4)
    with torch.no_grad():
        caches = (model.run_with_cache(clean)[1], model.run_with_cache(corrupted)[1])
    # every architecture: the logits and a key (a shared kv head under GQA); q and v on alternate entries
    for receiver in ["logits", (1, 2, "k"), (1, 2, "q") if ARCHS.index(arch) % 2 else (1, 1, "v")]:
        ours = path_patching(model, clean, corrupted, groups, receiver, metric)
        for g_i, senders in enumerate(groups):
            ref = _naive(model, clean, caches, senders, receiver, metric)
            assert float(ours.patched[g_i]) == pytest.approx(ref, abs=tol, rel=tol), (receiver, senders)
    assert ours.processing == processing_state(model) and ours.metric == "callable"
    assert ours.receiver in ("L1H1.v", "L1H2.q") and ours.sender_labels == ("L0H1", "L0H0+L0H3")


def test_named_metric_and_batched_groups_agree(attn_model):
    clean, corrupted = torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([[1, 9, 8, 4, 5]])
    one = path_patching(attn_model, clean, corrupted, "each", "logits", "logit_diff", answer_tokens=3,
                        wrong_tokens=4, batch_size=1)
    many = path_patching(attn_model, clean, corrupted, "each", "logits", "logit_diff", answer_tokens=3,
                         wrong_tokens=4, batch_size=8)
    torch.testing.assert_close(one.patched, many.patched)
    assert len(one.patched) == attn_model.cfg.n_layers * attn_model.cfg.n_heads
    # all heads as senders at once: only the MLP-free direct and composed paths remain, i.e. the corrupted run
    every = [(l, h) for l in range(attn_model.cfg.n_layers) for h in range(attn_model.cfg.n_heads)]
    full = path_patching(attn_model, clean, corrupted, every, "logits", "logit_diff", answer_tokens=3, wrong_tokens=4)
    assert isinstance(full, PathPatching)
    # embeddings stay clean, so this is not the corrupted run in general; heads alone are patched
    assert float(full.patched[0]) != pytest.approx(full.clean_metric)


def test_refusals(attn_model):
    clean, corrupted = torch.tensor([[1, 2, 3]]), torch.tensor([[1, 4, 3]])
    with pytest.raises(LensworksError, match="receiver"):
        path_patching(attn_model, clean, corrupted, [(0, 0)], "resid", "prob", answer_tokens=1)
    with pytest.raises(LensworksError, match="upstream"):
        path_patching(attn_model, clean, corrupted, [(1, 0)], (1, 2, "q"), "prob", answer_tokens=1)
    with pytest.raises(LensworksError, match="receiver head"):
        path_patching(attn_model, clean, corrupted, [(0, 0)], (1, 99, "q"), "prob", answer_tokens=1)
    with pytest.raises(LensworksError, match="sender"):
        path_patching(attn_model, clean, corrupted, [(0, 9)], "logits", "prob", answer_tokens=1)
    with pytest.raises(LensworksError, match="sender_heads"):
        path_patching(attn_model, clean, corrupted, 3.5, "logits", "prob", answer_tokens=1)
    with pytest.raises(LensworksError, match="line up"):
        path_patching(attn_model, clean, torch.tensor([[1, 4]]), [(0, 0)], "logits", "prob", answer_tokens=1)
    with pytest.raises(LensworksError, match="upstream"):
        path_patching(attn_model, clean, corrupted, "each", (0, 0, "k"), "prob", answer_tokens=1)
    for bad in (dict(batch_size=0), dict(batch_size=2.0), dict(position=10**12), dict(position=float("nan"))):
        with pytest.raises(LensworksError):
            path_patching(attn_model, clean, corrupted, [(0, 0)], "logits", "prob", answer_tokens=1, **bad)
    by_label = path_patching(attn_model, clean, corrupted, [(0, 0)], "L1H2.k", "prob", answer_tokens=1)
    assert by_label.receiver == "L1H2.k"
    for bad in ("L1H2.z", "L1H2", "H2.k", "logits.k"):
        with pytest.raises(LensworksError, match="receiver"):
            path_patching(attn_model, clean, corrupted, [(0, 0)], bad, "prob", answer_tokens=1)
    with pytest.raises(LensworksError, match="receiver layer"):
        path_patching(attn_model, clean, corrupted, [(0, 0)], (True, 0, "q"), "prob", answer_tokens=1)


def test_zoo_induction_circuit_goes_through_the_previous_token_heads():
    """induction-2l's documented circuit (docs/circuits.md): layer-0 previous-token heads feed the
    induction head L1H3's key (K-composition). On repeated sequences whose first half is corrupted,
    the two strongest senders into L1H3.k are the two strongest previous-token heads, and through its
    query or value those heads do a tenth of that at most."""
    from lensworks import zoo
    from lensworks.circuits import head_scores, repeated_tokens

    model = zoo.load("induction-2l")
    clean = repeated_tokens(model, seq_len=10, n_seqs=4, seed=0)
    other = repeated_tokens(model, seq_len=10, n_seqs=4, seed=1)
    corrupted = torch.cat([other[:, :11], clean[:, 11:]], 1)  # BOS + a different first half

    def second_half(logits):  # mean log-probability of the repeated half's next tokens
        lp = logits[:, 11:-1].log_softmax(-1)
        return lp.gather(-1, clean[:, 12:, None].to(lp.device))[..., 0].mean(1)

    effect = {r: path_patching(model, clean, corrupted, "each", (1, 3, r), second_half).effect_grid()[0].abs()
              for r in "qkv"}
    prev = head_scores(model, "previous_token").scores[0]
    top = prev.topk(2).indices
    assert set(effect["k"].topk(2).indices.tolist()) == set(top.tolist())
    assert float(effect["k"][top].min()) > 10 * max(float(effect["q"][top].max()), float(effect["v"][top].max()))

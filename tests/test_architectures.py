"""Every public analysis on every entry of the architecture list (tests/archs.py), each with the
cross-check that applies: TransformerLens's own function, a dense computation, or a naive
forward pass with hooks."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from archs import ARCHS, arch_model, float_tol, hf_dir, refusal
from lensworks.circuits import composition_scores, copying_scores, find_induction_heads, head_scores, repeated_tokens
from lensworks.geometry import (
    NeighbourApproximation,
    block_ablation,
    block_decomposition,
    logit_lens,
    residual_stats,
    token_subspaces,
    update_alignment,
)
from lensworks.model import LensworksError, default_seq_len, has_resid_mid, model_streams, processing_state, uses_bos
from lensworks.probes import compare_to_embedding, embedding_basis, probe_inputs, unlikely_token_usage

pytestmark = pytest.mark.parametrize("arch", ARCHS)

#: Text with newlines in it: a nanoGPT character vocabulary has '\n' as id 0 (the char-nl entry).
TEXT = "the quick brown fox jumps over the lazy dog.\n" * 6 + "one two three four five six seven eight nine ten.\n" * 4


def _tokens(model, n=6, pos=12, seed=0):
    lo = 1 if model.cfg.d_vocab < 100 else 10  # skip BOS / the checkpoint's special tokens
    return torch.randint(lo, model.cfg.d_vocab, (n, pos), generator=torch.Generator().manual_seed(seed))


def _lines(model):
    words = TEXT.split()
    return [" ".join(words[i : i + 3]) + "\n" + " ".join(words[i + 3 : i + 5]) for i in range(0, 40, 5)]


def _fp32(arch, model):
    """An fp32 twin of a bf16 entry (same checkpoint), for references with no bf16 kernels."""
    if model.cfg.dtype == torch.float32:
        return model
    from lensworks import load_model

    return load_model(hf_dir("llama"))


# --------------------------------------------------------------------------- circuits


@pytest.mark.parametrize("mode", ["Q", "K", "V"])
def test_composition_equals_transformer_lens(arch, mode):
    model = arch_model(arch)
    ours = composition_scores(model, mode, baseline_samples=20)
    ref_model = _fp32(arch, model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ref_model.all_composition_scores(mode)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    for l1 in range(L):
        for l2 in range(l1 + 1, L):
            torch.testing.assert_close(ours.scores[l1, :, l2, :].float(), ref[l1, :, l2, :].float(),
                                       atol=float_tol(model, 1e-5), rtol=float_tol(model, 1e-4))
    assert ours.processing == processing_state(model)
    assert ours.figure().data and len(ours.to_frame()) == L * (L - 1) // 2 * H * H


def test_copying_equals_dense_eigenvalues(arch):
    model = arch_model(arch)
    ours = copying_scores(model, baseline_samples=4)
    ref_model = _fp32(arch, model)
    # TransformerLens's own OV factors (GQA expanded) and embedding as the residual stream sees it
    W_E = ref_model.embed(torch.arange(model.cfg.d_vocab)[None])[0].detach().double()
    W_U = ref_model.W_U.detach().double()
    OV = ref_model.OV
    for l in range(model.cfg.n_layers):
        for h in range(model.cfg.n_heads):
            full = W_E @ OV.A[l, h].detach().double() @ OV.B[l, h].detach().double() @ W_U
            lam = torch.from_numpy(np.linalg.eigvals(full.numpy()))  # LAPACK geev via numpy: 40x torch's here
            lam = lam[lam.abs().argsort(descending=True)[: model.cfg.d_head]]
            ref = lam.real.sum() / lam.abs().sum()
            assert float(ours.scores[l, h]) == pytest.approx(float(ref), abs=float_tol(model, 1e-4))
    assert ours.figure().data and len(ours.to_frame()) == model.cfg.n_layers * model.cfg.n_heads


@pytest.mark.parametrize("kind", ["previous_token", "duplicate_token", "induction"])
def test_head_scores_equal_the_attention_pattern(arch, kind):
    model = arch_model(arch)
    bos = uses_bos(model)
    n = default_seq_len(model, preferred=10, bos=bos)
    toks = repeated_tokens(model, seq_len=n, n_seqs=3, seed=1)
    assert toks.shape[1] == 2 * n + int(bos)
    ours = head_scores(model, kind, tokens=toks)
    _, cache = model.run_with_cache(toks)
    pat = torch.stack([cache["pattern", l] for l in range(model.cfg.n_layers)]).float()
    o = int(bos)
    d = {"induction": n - 1, "duplicate_token": n, "previous_token": 1}[kind]
    q = torch.arange(o + n if kind != "previous_token" else o + 1, o + 2 * n)
    direct = pat[:, :, :, q, q - d].mean(dim=(1, 3))
    torch.testing.assert_close(ours.scores.float(), direct, atol=float_tol(model, 1e-5), rtol=1e-4)


def test_head_scores_and_verdict_with_default_arguments(arch):
    model = arch_model(arch)
    scores = head_scores(model, "induction")  # default seq_len must fit n_ctx
    assert scores.scores.shape == (model.cfg.n_layers, model.cfg.n_heads)
    report = find_induction_heads(model)
    assert report.heads == [] and report.summary()  # random weights: no induction heads
    assert report.figure().data


# --------------------------------------------------------------------------- geometry


def test_residual_stats_equal_the_cache(arch):
    model = arch_model(arch)
    toks = _tokens(model)
    streams = model_streams(model)
    stats = residual_stats(model, {"a": toks[:3], "b": toks[3:]}, streams=streams)
    _, cache = model.run_with_cache(toks)
    for si, s in enumerate(streams):
        x = torch.stack([cache[f"blocks.{l}.hook_{s}"][:3, -1] for l in range(model.cfg.n_layers)]).float()
        torch.testing.assert_close(stats.mean["a"][si].float(), x.mean(1), atol=float_tol(model, 1e-5), rtol=1e-4)
    assert stats.figure().data and len(stats.to_frame())
    assert ("resid_mid" in streams) == has_resid_mid(model)


def test_update_alignment_equals_the_cache(arch):
    model = arch_model(arch)
    toks = _tokens(model)
    ua = update_alignment(model, toks)
    _, cache = model.run_with_cache(toks)
    attn0 = cache["blocks.0.hook_attn_out"][:, -1].float().mean(0)
    other = cache[f"blocks.{model.cfg.n_layers - 1}.hook_{'attn_out' if model.cfg.attn_only else 'mlp_out'}"][:, -1].float().mean(0)
    ref = F.cosine_similarity(attn0, other, dim=0)
    assert float(ua.cosine[0, -1]) == pytest.approx(float(ref), abs=float_tol(model, 1e-4))


def _naive_ablation(model, tokens, layer, kind):
    store = {}

    def grab(act, hook):
        store["c"] = act.clone()

    def drop(act, hook):
        return act - store["c"]

    logits = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.hook_{kind}", grab),
                                                      (f"blocks.{layer}.hook_resid_post", drop)])
    return logits[:, -1].float().log_softmax(-1)


def test_block_ablation_equals_run_with_hooks(arch):
    model = arch_model(arch)
    toks = _tokens(model, n=4, pos=10)
    table = block_ablation(model, toks, batch_size=2)
    assert table.decomposition_ok
    clean = model(toks)[:, -1].float().log_softmax(-1)
    kinds = (("attn_out", "drop_attn"),) + ((("mlp_out", "drop_mlp"),) if not model.cfg.attn_only else ())
    for layer in range(model.cfg.n_layers):
        for kind, which in kinds:
            abl = _naive_ablation(model, toks, layer, kind)
            h = ((clean.exp().sqrt() - abl.exp().sqrt()) ** 2).sum(-1).sqrt() / math.sqrt(2)
            torch.testing.assert_close(getattr(table, f"{which}_hellinger")[layer].float(), h,
                                       atol=float_tol(model, 1e-5), rtol=1e-3)
    assert table.figure().data and len(table.to_frame()) == model.cfg.n_layers


def test_circuit_graph_edges_are_the_composition_pairs_above_z(arch):
    from lensworks.circuits import circuit_graph

    model = arch_model(arch)
    g = circuit_graph(model, modes=("K",), z_min=2.0)
    comp = composition_scores(model, "K", progress=False)
    z = (comp.scores - comp.baseline.mean) / comp.baseline.std
    expected = {(f"L{a}H{b}", f"L{c}H{d}") for a, b, c, d in (comp.mask() & (z >= 2.0)).nonzero().tolist()}
    assert {(e[0], e[1]) for e in g.edges} == expected
    assert len(g.nodes) == model.cfg.n_layers * model.cfg.n_heads and g.figure().data


def test_skip_trigrams_equal_the_dense_circuits(arch):
    from lensworks.circuits import skip_trigrams
    from lensworks.model import attention_weights, embedding, unembedding

    model = arch_model(arch)
    layer, head = model.cfg.n_layers - 1, model.cfg.n_heads - 1
    tri = skip_trigrams(model, layer, head, k=8, source_chunk=37)
    w = attention_weights(model, [layer])
    E, U = embedding(model).double(), unembedding(model).double()
    ov = E @ w["W_V"][0, head].double() @ w["W_O"][0, head].double() @ U  # dense d_vocab x d_vocab, tiny here
    vals, _ = ov.flatten().topk(8)
    torch.testing.assert_close(tri.ov.double(), vals, rtol=float_tol(model, 1e-4), atol=float_tol(model, 1e-4))
    qk = (E @ w["W_Q"][0, head].double()) @ (E[tri.source] @ w["W_K"][0, head].double()).T
    torch.testing.assert_close(tri.qk.double(), qk.max(0).values, rtol=float_tol(model, 1e-4), atol=float_tol(model, 1e-4))
    assert tri.figure().data and len(tri.to_frame()) == 8


def test_effective_dimensionality_equals_dense_covariance(arch):
    from lensworks.geometry import effective_dimensionality

    model = arch_model(arch)
    toks = _tokens(model, n=10)
    ed = effective_dimensionality(model, toks, streams=("resid_pre", "resid_post"), batch_size=4)
    _, cache = model.run_with_cache(toks)
    for si, s in enumerate(("resid_pre", "resid_post")):
        for layer in range(model.cfg.n_layers):
            x = cache[f"blocks.{layer}.hook_{s}"][:, -1].double()
            lam = torch.linalg.eigvalsh(torch.cov(x.T)).flip(0).clamp_min(0)
            pr = float(lam.sum() ** 2 / (lam ** 2).sum())
            assert float(ed.participation_ratio[si, layer]) == pytest.approx(pr, rel=float_tol(model, 1e-4))
    assert ed.figure().data and len(ed.to_frame()) == 2 * model.cfg.n_layers


def test_cached_activations_give_the_same_numbers(arch):
    """An ActivationCache the user already has stands in for the tokens: no second forward pass."""
    model = arch_model(arch)
    toks = _tokens(model)
    _, cache_a = model.run_with_cache(toks[:3])
    _, cache_b = model.run_with_cache(toks[3:])
    streams = model_streams(model)
    from_tokens = residual_stats(model, {"a": toks[:3], "b": toks[3:]}, streams=streams)
    from_cache = residual_stats(model, {"a": cache_a, "b": cache_b}, streams=streams)
    for name in ("a", "b"):
        torch.testing.assert_close(from_cache.var[name], from_tokens.var[name], atol=float_tol(model, 1e-6), rtol=1e-5)
        torch.testing.assert_close(from_cache.mean[name], from_tokens.mean[name], atol=float_tol(model, 1e-6), rtol=1e-5)
    _, cache = model.run_with_cache(toks)
    lens_t, lens_c = logit_lens(model, toks), logit_lens(model, cache)
    torch.testing.assert_close(lens_c.kl, lens_t.kl, atol=float_tol(model, 1e-5), rtol=1e-4)
    assert lens_c.prompt_labels[0] == "cached row 0"
    # probes read the cache for the main model (the tokens give the labels); same probes
    kw = dict(offsets=(0,), streams=("resid_pre",), controls=False, method="lda")
    p_t, p_c = probe_inputs(model, toks, **kw), probe_inputs(model, toks, cache=cache, **kw)
    torch.testing.assert_close(p_c.accuracy, p_t.accuracy)
    torch.testing.assert_close(p_c.probe_weights, p_t.probe_weights, atol=float_tol(model, 1e-4), rtol=1e-3)


def test_decomposition_and_logit_lens_reproduce_the_output(arch):
    model = arch_model(arch)
    toks = _tokens(model)
    dec = block_decomposition(model, toks)
    assert bool(torch.isfinite(dec.ffn_only_cosine).all()) and dec.figure().data
    lens = logit_lens(model, toks)
    assert lens.final_max_error < float_tol(model, 1e-4)
    assert lens.figure().data and len(lens.to_frame())


def test_neighbour_approximation(arch):
    model = arch_model(arch)
    hook = "attn_out" if model.cfg.attn_only else "mlp_out"
    corpus = torch.cat([_tokens(model, n=1, pos=120, seed=s)[0] for s in range(2)])
    approx = NeighbourApproximation.fit(model, corpus, window=4, hook=hook, batch_size=64)
    prompts = _tokens(model, n=5, pos=4, seed=9)
    ev = approx.evaluate(prompts, thresholds=0.5)
    assert ev.hellinger.shape == (5,) and bool(((ev.hellinger >= 0) & (ev.hellinger <= 1)).all())
    assert len(ev.to_frame()) == 5 and ev.figure().data


def test_neighbour_index_prefix_tree_equals_full_windows(arch):
    """The prefix-tree forward (each distinct prefix run once, keys and values from the cache)
    gives the full windows' outputs; where the model cannot share prefixes, asking for it says so."""
    from lensworks.geometry._neighbour_index import window_counts
    from lensworks.geometry._window_forward import embed_windows, prefix_sharing_supported

    model = arch_model(arch)
    hook = "attn_out" if model.cfg.attn_only else "mlp_out"
    # four token ids: the sorted windows share most of their prefixes
    corpus = torch.randint(4, (300,), generator=torch.Generator().manual_seed(0)) + 1
    windows = window_counts(corpus, 6, model.cfg.d_vocab)[0]
    names = [f"blocks.{b}.hook_{hook}" for b in range(model.cfg.n_layers)]
    kw = dict(bos=uses_bos(model), dtype=torch.float32, batch_size=64, progress=False)
    full, _ = embed_windows(model, windows, names, shared_prefixes=False, **kw)
    if not prefix_sharing_supported(model):
        with pytest.raises(LensworksError, match="shared_prefixes"):
            embed_windows(model, windows, names, shared_prefixes=True, **kw)
        return
    shared, _ = embed_windows(model, windows, names, shared_prefixes=True, **kw)
    torch.testing.assert_close(shared, full, atol=float_tol(model, 2e-5), rtol=0)
    # the first block only (stop_at_layer 1), and rows in any order give the same numbers
    perm = torch.randperm(windows.shape[0], generator=torch.Generator().manual_seed(1))
    one, _ = embed_windows(model, windows[perm], names[:1], shared_prefixes=True, **kw)
    torch.testing.assert_close(one[0], full[0, perm], atol=float_tol(model, 2e-5), rtol=0)


def test_token_subspaces_read_logits_as_the_model_does(arch):
    from lensworks.geometry.subspaces import _tail_logits

    model = arch_model(arch)
    x = torch.randn(3, model.cfg.d_model, generator=torch.Generator().manual_seed(0)).to(model.cfg.dtype) * 3
    for at, start in (("ln_final", model.cfg.n_layers), (1, 1)):
        # TransformerLens's own forward from that point (soft-cap applied once, as in forward);
        # a TransformerBridge refuses start_at_layer == n_layers, so there: its ln_final + unembed + cap
        if start < model.cfg.n_layers:
            ref = model(x[:, None], start_at_layer=start)[:, 0]
        else:
            ref = model.unembed(model.ln_final(x[:, None]))[:, 0]
            cap = model.cfg.output_logits_soft_cap
            ref = cap * torch.tanh(ref / cap) if cap and cap > 0 else ref
        torch.testing.assert_close(_tail_logits(model, x, at), ref, atol=float_tol(model, 1e-5), rtol=1e-4)
    subs = token_subspaces(model, [11, 12], n_samples=6, steps=40, seed=0, progress=False)
    assert subs.final_prob.shape == (2, 6) and subs.figure().data and len(subs.to_frame()) == 2


# --------------------------------------------------------------------------- probes


def test_probes_run_with_controls(arch):
    model = arch_model(arch)
    toks = _tokens(model, n=24, pos=10)
    res = probe_inputs(model, toks, offsets=(0, -1), seed=0)
    assert res.streams == model_streams(model)
    acc = res.accuracy
    assert bool(((acc >= 0) & (acc <= 1)).all())
    assert res.figure().data and len(res.to_frame())
    W = torch.randn(model.cfg.d_model, 8, generator=torch.Generator().manual_seed(0))
    cmp = compare_to_embedding(model, W, tokens=torch.arange(10, 18), n_random=5)
    assert cmp.figure().data and len(cmp.to_frame())


def test_embedding_basis_pca_equals_svd(arch):
    model = arch_model(arch)
    basis = embedding_basis(model, "pca", 4)
    W = model.W_E.detach().double()
    W = W - W.mean(0)
    s = torch.linalg.svdvals(W)
    ev = (s**2 / (s**2).sum())[:4]
    torch.testing.assert_close(basis.importance.double(), ev, atol=float_tol(model, 1e-5), rtol=1e-3)


def test_unlikely_token_usage(arch):
    model = arch_model(arch)
    usage = unlikely_token_usage(model, _tokens(model, n=4, pos=8), k=5, n_random=4)
    assert usage.figure().data and len(usage.to_frame())


def test_attention_explorer_shows_the_model_patterns(arch):
    from lensworks.plotting import attention_explorer

    model = arch_model(arch)
    toks = _tokens(model, n=2, pos=7)
    fig = attention_explorer(model, toks)
    buttons = fig.layout.updatemenus[0].buttons
    assert len(buttons) == 2 * model.cfg.n_layers * model.cfg.n_heads
    _, cache = model.run_with_cache(toks)
    L, H = model.cfg.n_layers - 1, model.cfg.n_heads - 1
    view = next(b for b in buttons if b.label == f"prompt 1 · L{L}H{H}")
    z = torch.tensor(view.args[0]["z"][0], dtype=torch.float64)
    ref = cache[f"blocks.{L}.attn.hook_pattern"][1, H].double()
    lower = torch.ones(7, 7).tril().bool()
    torch.testing.assert_close(z[lower], ref[lower], atol=float_tol(model, 1e-6), rtol=0)
    assert torch.isnan(z[~lower]).all()  # the future is masked, never shown as 0


def test_attention_grid_shows_the_model_patterns(arch):
    """The grid view: one heatmap per head of the layer, each the cached pattern of that head,
    hover text naming the query and key tokens."""
    from lensworks.model import token_strings
    from lensworks.plotting import attention_explorer

    model = arch_model(arch)
    toks = _tokens(model, n=2, pos=7)
    L, H = model.cfg.n_layers - 1, model.cfg.n_heads
    fig = attention_explorer(model, toks, view="grid", layer=L, prompt=1)
    assert [t.name for t in fig.data] == [f"L{L}H{h}" for h in range(H)] and not fig.layout.updatemenus
    _, cache = model.run_with_cache(toks)
    lower = torch.ones(7, 7).tril().bool()
    for h, trace in enumerate(fig.data):
        z = torch.tensor(trace.z, dtype=torch.float64)
        ref = cache[f"blocks.{L}.attn.hook_pattern"][1, h].double()
        torch.testing.assert_close(z[lower], ref[lower], atol=float_tol(model, 1e-6), rtol=0)
        assert torch.isnan(z[~lower]).all()
    words = token_strings(model, toks[1])
    hover = fig.data[0].text
    assert repr(words[4]) in hover[4][2] and repr(words[2]) in hover[4][2]  # query 4, key 2
    assert hover[4][2].startswith("query 4") and "key 2" in hover[4][2] and hover[2][4] == ""
    every = attention_explorer(model, toks, view="grid")  # every layer, a menu over them
    assert len(every.data) == model.cfg.n_layers * H and len(every.layout.updatemenus[0].buttons) == model.cfg.n_layers


# --------------------------------------------------------------------------- term importance


def _naive_term_losses(model, toks, max_order):
    """Seed 003's expansion written out head by head from the weights and a cache (LayerNorm
    models with sequential blocks and ungated MLPs): order components and every path vector."""
    from lensworks.model import attention_weights

    cfg = model.cfg
    logits, cache = model.run_with_cache(toks)
    w = {k: v.double() for k, v in attention_weights(model).items()}
    d = lambda t: t.detach().double()  # noqa: E731

    def lin(x, ln, scale):  # a frozen LayerNorm without its bias
        return (x - x.mean(-1, keepdim=True)) / d(scale) * d(ln.w)

    def head_out(l, h, x):
        v = lin(x, model.blocks[l].ln1, cache[f"blocks.{l}.ln1.hook_scale"]) @ w["W_V"][l, h]
        return torch.einsum("bqk,bkd->bqd", d(cache[f"blocks.{l}.attn.hook_pattern"][:, h]), v) @ w["W_O"][l, h]

    x0 = d(cache["blocks.0.hook_resid_pre"])
    orders = [x0] + [torch.zeros_like(x0)] * cfg.n_layers
    paths = {(): orders[0]}
    for l in range(cfg.n_layers):
        blk = model.blocks[l]
        b_v = d(blk.attn.b_V) if blk.attn.b_V is not None else torch.zeros(cfg.n_heads, cfg.d_head, dtype=torch.float64)
        const = sum((d(blk.ln1.b) @ w["W_V"][l, h] + b_v[h]) @ w["W_O"][l, h] for h in range(cfg.n_heads)) + d(blk.attn.b_O)
        for p in [p for p in paths if len(p) < max_order and (not p or p[-1][0] < l)]:
            for h in range(cfg.n_heads):
                paths[p + ((l, h),)] = head_out(l, h, paths[p])
        moved = [sum(head_out(l, h, orders[j - 1]) for h in range(cfg.n_heads)) if j else const for j in range(len(orders))]
        orders = [o + m for o, m in zip(orders, moved)]
        paths[()] = orders[0]
        if cfg.attn_only:
            continue
        pre, post = d(cache[f"blocks.{l}.mlp.hook_pre"]), d(cache[f"blocks.{l}.mlp.hook_post"])
        ratio = post / pre
        mlp = lambda x: ((lin(x, blk.ln2, cache[f"blocks.{l}.ln2.hook_scale"]) @ d(blk.mlp.W_in)) * ratio) @ d(blk.mlp.W_out)  # noqa: E731
        mlp_const = ((d(blk.ln2.b) @ d(blk.mlp.W_in) + d(blk.mlp.b_in)) * ratio) @ d(blk.mlp.W_out) + d(blk.mlp.b_out)
        orders = [o + mlp(o) + (mlp_const if j == 0 else 0) for j, o in enumerate(orders)]
        paths = {p: (orders[0] if not p else v + mlp(v)) for p, v in paths.items()}

    scale_f = cache["ln_final.hook_scale"]
    readout = lambda x: lin(x, model.ln_final, scale_f)  # noqa: E731
    const_f = d(model.ln_final.b)

    def loss(normalized):
        lg = normalized @ d(model.W_U) + d(model.b_U)
        return float(-torch.log_softmax(lg[:, :-1], -1).gather(-1, toks[:, 1:, None]).mean())

    by_order = [loss(sum(readout(o) for o in orders[: k + 1]) + const_f) for k in range(cfg.n_layers + 1)]
    full = sum(readout(o) for o in orders) + const_f
    return by_order, {p: loss(full - readout(v)) for p, v in paths.items()}


def test_term_importance_sums_back_to_the_model(arch):
    from lensworks.circuits import term_importance

    model = arch_model(arch)
    toks = _tokens(model, n=4, pos=10)
    if refusal(arch, "term_importance"):
        with pytest.raises(LensworksError, match=refusal(arch, "term_importance")):
            term_importance(model, toks, max_order=2)
        return
    ti = term_importance(model, toks, max_order=2, batch_size=3, slots_per_pass=7)
    with torch.no_grad():
        own = float(model(toks, return_type="loss"))
    assert ti.model_loss == pytest.approx(own, rel=float_tol(model, 1e-5))
    # the frozen expansion of every order is the model itself (MLPs linearised exactly at the real input)
    assert float(ti.loss_by_order[-1]) == pytest.approx(own, rel=float_tol(model, 1e-5))
    assert ti.reconstruction_error < float_tol(model, 1e-5)
    n_heads, n_layers = model.cfg.n_heads, model.cfg.n_layers
    assert len(ti.terms) == 1 + n_layers * n_heads + math.comb(n_layers, 2) * n_heads**2 == len(ti.loss_without)
    frame = ti.to_frame()
    assert list(frame.columns) == ["term", "order", "loss_without", "loss_increase"]
    assert frame["loss_increase"].is_monotonic_decreasing and ti.figure().data and ti.headline()
    if arch in ("attn-only", "ln-mlp"):  # LayerNorm, sequential blocks, ungated MLP: written out by hand
        by_order, without = _naive_term_losses(model, toks, 2)
        torch.testing.assert_close(ti.loss_by_order.double(), torch.tensor(by_order, dtype=torch.float64),
                                   rtol=1e-5, atol=1e-5)
        from lensworks.circuits.terms import path_label

        naive = torch.tensor([without[p] for p in sorted(without, key=lambda p: ti.terms.index(path_label(p)))],
                             dtype=torch.float64)
        torch.testing.assert_close(ti.loss_without.double(), naive, rtol=1e-5, atol=1e-5)

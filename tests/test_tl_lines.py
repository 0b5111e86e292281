"""TransformerLens 3.x and 4.x give the same numbers on the same checkpoints.

Each line runs in its own virtual environment, so the comparison goes through a file: with
``LENSWORKS_CROSS_LINE=FILE`` set (``.ci/run`` sets it), the TransformerLens 3 run writes its
numbers for every architecture of tests/archs.py and the TransformerLens 4 run compares its own
against them: composition (Q/K/V), copying and behavioural scores, and residual statistics,
within 1e-4 (2e-2 for bf16, which keeps about three significant digits).
"""

from __future__ import annotations


import pytest
import torch

from archs import ARCHS, BRIDGE_ONLY_ARCHS, arch_model, float_tol
from lensworks.circuits import composition_scores, copying_scores, head_scores, repeated_tokens
from lensworks.geometry import residual_stats
from lensworks.model import TL_MAJOR, default_seq_len, model_streams, processing_state, uses_bos

import crossline  # noqa: E402

DUMP = crossline.DUMP


def _numbers(model) -> dict[str, list]:
    out: dict[str, list] = {}
    for mode in ("Q", "K", "V"):
        out[f"composition_{mode}"] = composition_scores(model, mode, baseline=False).scores.float().tolist()
    out["copying"] = copying_scores(model, baseline=False).scores.float().tolist()
    n = default_seq_len(model, preferred=10, bos=uses_bos(model))
    toks = repeated_tokens(model, seq_len=n, n_seqs=4, seed=3)
    for kind in ("previous_token", "duplicate_token", "induction"):
        out[kind] = head_scores(model, kind, tokens=toks).scores.float().tolist()
    lo = 1 if model.cfg.d_vocab < 100 else 10
    data = torch.randint(lo, model.cfg.d_vocab, (6, 12), generator=torch.Generator().manual_seed(5))
    stats = residual_stats(model, {"a": data[:3], "b": data[3:]}, streams=model_streams(model), progress=False)
    out["resid_mean"] = stats.mean["a"].float().tolist()
    out["resid_var"] = stats.var["b"].float().tolist()
    out["processing"] = [processing_state(model)[k] for k in ("fold_ln", "center_writing_weights", "center_unembed")]
    return out


@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in BRIDGE_ONLY_ARCHS])  # those have one line only
def test_same_numbers_on_both_lines(arch):
    if not DUMP:
        pytest.skip("set LENSWORKS_CROSS_LINE=FILE: the TransformerLens 3 run writes it, the 4 run compares (.ci/run does)")
    model = arch_model(arch)
    ours = _numbers(model)
    if TL_MAJOR < 4:
        crossline.store(arch, ours)
        return
    ref = crossline.load(arch)
    assert ours["processing"] == ref["processing"]
    tol = float_tol(model, 1e-4)
    for key, value in ours.items():
        if key == "processing":
            continue
        torch.testing.assert_close(torch.tensor(value), torch.tensor(ref[key]), atol=tol, rtol=tol, msg=f"{arch} {key}")


def test_zoo_describes_every_model_on_this_line():
    """zoo.describe reads recipes and stored measurements; it must not need TransformerLens 3."""
    from lensworks import zoo

    for name in zoo.names():
        info = zoo.describe(name)
        assert info["summary"] and info["hyper_parameters"], name

"""The loader's outputs against a frozen copy, on every entry of the tests' architecture list.

Guards refactors of the loaders (``lensworks/model/_load.py``, ``_hf.py``, ``_families.py``,
``_backend.py``, ``_bridge.py``): for each entry of :data:`archs.ARCHS` and each Hugging Face family
of :data:`hf_families.FAMILIES`, loaded with the entry's default processing and with none, the
config fields that matter, every state-dict entry (shape, dtype, float64 sum, sum of squares and
sum of absolute values), the BOS facts, the token ids of a fixed text and the logits on fixed
token ids must equal what the loader gave when the copy was recorded
(``tests/data/loader_frozen_tl3.json`` / ``_tl4.json``, one per TransformerLens line).

Re-record only when a change of the loaders' outputs is intended::

    OMP_NUM_THREADS=1 .venv/bin/python tests/test_loader_frozen.py --write
    OMP_NUM_THREADS=1 .venv-tl4/bin/python tests/test_loader_frozen.py --write

An entry added to the architecture list after the copy was recorded is skipped, saying so, until
it is recorded (``--add`` records only the entries the copy lacks, keeping the others). The family registry and the backend choice are tested at the end.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from archs import _HF, ARCHS, arch_checkpoint, hf_dir  # noqa: E402
from hf_families import FAMILIES, REGISTERED_FAMILIES  # noqa: E402
from lensworks.model import (SUPPORTED_ARCHITECTURES, TL_MAJOR, LensworksError, bos_token_id,  # noqa: E402
                             encode_text, family_for, load_model, processing_state, register_family, uses_bos)
from lensworks.model import _families  # noqa: E402
from lensworks.model._backend import backend  # noqa: E402
from lensworks.model._families import families  # noqa: E402

FROZEN = Path(__file__).parent / "data" / f"loader_frozen_tl{min(TL_MAJOR, 4)}.json"

#: Every entry of the architecture list, then the Hugging Face families it does not name.
ENTRIES: tuple[str, ...] = ARCHS + tuple(f"hf-{f}" for f in REGISTERED_FAMILIES if f not in {fam for fam, _ in _HF.values()})
MODES = ("default", "raw")
_RAW = dict(fold_ln=False, center_writing_weights=False, center_unembed=False)
#: Text in every entry's vocabulary (the attention-only entry has lowercase letters, digits, " .,\n").
_TEXT = "the cat sat on the mat, 12 34.\nthe end"
#: Config fields recorded (those absent on a line are recorded as None).
_CFG_FIELDS = (
    "n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "d_vocab_out", "n_ctx", "act_fn", "eps",
    "normalization_type", "positional_embedding_type", "rotary_dim", "rotary_base", "rotary_adjacent_pairs",
    "n_key_value_heads", "default_prepend_bos", "tokenizer_prepends_bos", "original_architecture", "attn_only",
    "use_local_attn", "window_size", "attn_types", "parallel_attn_mlp", "gated_mlp", "final_rms", "attn_scale",
    "use_attn_scale", "attn_scores_soft_cap", "output_logits_soft_cap", "use_normalization_before_and_after",
    "scale_attn_by_inverse_layer_idx", "use_NTK_by_parts_rope", "dtype",
)
_TMP = Path(tempfile.mkdtemp(prefix="lensworks-frozen-"))


def _source(entry: str, mode: str) -> tuple[Path, dict[str, Any]]:
    """The checkpoint of ``entry`` and the load_model keywords of ``mode``."""
    if entry.startswith("hf-"):
        path, kwargs = hf_dir(entry[3:]), {}
    elif entry in _HF:
        path, kwargs = hf_dir(_HF[entry][0]), dict(_HF[entry][1])
    else:
        path, kwargs = arch_checkpoint(entry, _TMP)[0], {}
    if mode == "raw":
        kwargs = {**kwargs, **_RAW}
    return path, kwargs


def _plain(value: Any) -> Any:
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _stats(t: torch.Tensor) -> dict[str, Any]:
    x = t.detach().to("cpu", torch.float64)
    return {"shape": list(t.shape), "dtype": str(t.dtype), "sum": x.sum().item(), "sumsq": (x * x).sum().item(),
            "abs": x.abs().sum().item()}


def record(entry: str, mode: str) -> dict[str, Any]:
    """What the loader gives for ``entry`` loaded in ``mode`` ("default" or "raw"), as JSON values."""
    path, kwargs = _source(entry, mode)
    model = load_model(path, **kwargs)
    cfg = {k: _plain(getattr(model.cfg, k, None)) for k in _CFG_FIELDS}
    sd = {k: _stats(v) for k, v in model.state_dict().items() if v.is_floating_point()}
    d_vocab = model.cfg.d_vocab
    toks = torch.tensor([[(7 * i + 3) % d_vocab for i in range(12)], [(5 * i + 1) % d_vocab for i in range(12)]])
    with torch.no_grad():
        logits = model(toks.to(model.cfg.device)).detach().to("cpu", torch.float64)
    tok = model.tokenizer
    return {
        "kwargs": {k: _plain(v) for k, v in kwargs.items()},
        "cfg": cfg,
        "processing": {k: _plain(v) for k, v in processing_state(model).items() if k != "model"},  # identity: newer than the copy
        "state_dict": sd,
        "bos": {"bos_token_id": bos_token_id(model), "uses_bos": uses_bos(model),
                "tokenizer_bos_token_id": getattr(tok, "bos_token_id", None) if tok is not None else None},
        "text_ids": encode_text(model, _TEXT).tolist() if tok is not None else None,
        "logits": {"stats": _stats(logits), "last": logits[:, -1, :8].tolist(), "first": logits[0, 0, :8].tolist()},
    }


def _frozen() -> dict[str, Any]:
    if not FROZEN.is_file():
        pytest.skip(f"no frozen copy {FROZEN.name}; record it with `python tests/test_loader_frozen.py --write`")
    return json.loads(FROZEN.read_text())


def _close(got: float, want: float, scale: float, where: str) -> None:
    """Equal within 1e-6 relative, relative to the tensor's magnitude for sums near zero
    (non-finite values, such as the -inf of an attention mask buffer, exactly)."""
    if not (math.isfinite(want) and math.isfinite(scale)):
        assert got == want or (math.isnan(got) and math.isnan(want)), f"{where}: {got!r} != frozen {want!r}"
        return
    assert abs(got - want) <= 1e-6 * max(abs(want), scale, 1e-12), f"{where}: {got!r} != frozen {want!r}"


def _compare_stats(got: dict[str, Any], want: dict[str, Any], where: str) -> None:
    assert got["shape"] == want["shape"], f"{where}: shape {got['shape']} != frozen {want['shape']}"
    assert got["dtype"] == want["dtype"], f"{where}: dtype {got['dtype']} != frozen {want['dtype']}"
    for key in ("sum", "sumsq", "abs"):
        _close(got[key], want[key], want["abs"], f"{where} {key}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("entry", ENTRIES)
def test_loader_output_equals_the_frozen_copy(entry, mode):
    frozen = _frozen()
    key = f"{entry}/{mode}"
    if key not in frozen:
        pytest.skip(f"{key} was added after {FROZEN.name} was recorded; re-record with --write")
    want, got = frozen[key], record(entry, mode)
    assert got["kwargs"] == want["kwargs"]
    assert got["cfg"] == want["cfg"], {k: (got["cfg"].get(k), v) for k, v in want["cfg"].items() if got["cfg"].get(k) != v}
    assert got["processing"] == want["processing"]
    assert got["bos"] == want["bos"]
    assert got["text_ids"] == want["text_ids"]
    assert sorted(got["state_dict"]) == sorted(want["state_dict"])
    for name, stats in want["state_dict"].items():
        _compare_stats(got["state_dict"][name], stats, f"{key} {name}")
    _compare_stats(got["logits"]["stats"], want["logits"]["stats"], f"{key} logits")
    scale = max(abs(v) for row in want["logits"]["last"] for v in row)
    for part in ("last", "first"):
        flat_got = torch.tensor(got["logits"][part], dtype=torch.float64).flatten().tolist()
        flat_want = torch.tensor(want["logits"][part], dtype=torch.float64).flatten().tolist()
        for g, w in zip(flat_got, flat_want, strict=True):
            _close(g, w, scale, f"{key} logits[{part}]")


# --------------------------------------------------------------------------- families and backends


def test_every_registered_family_has_a_test_checkpoint():
    specs = families()
    assert [s.architecture for s in specs] == list(SUPPORTED_ARCHITECTURES)
    assert {s.family for s in specs} == set(REGISTERED_FAMILIES)  # tests/hf_families.py builds one of each
    for spec in specs:
        assert family_for(spec.architecture) is spec and SUPPORTED_ARCHITECTURES[spec.architecture] == spec.family


def test_family_for_and_register_family_refuse_with_what_came():
    with pytest.raises(LensworksError, match="unsupported architecture MambaForCausalLM") as err:
        family_for("MambaForCausalLM", where="x/config.json")
    assert all(a in str(err.value) for a in SUPPORTED_ARCHITECTURES) and "x/config.json" in str(err.value)
    with pytest.raises(LensworksError, match="model_type 'mamba'"):
        family_for(None, model_type="mamba")
    llama = family_for("LlamaForCausalLM")
    with pytest.raises(LensworksError, match="already registered"):
        register_family(dataclasses.replace(llama))
    with pytest.raises(LensworksError, match="family name 'llama' is already used"):
        register_family(dataclasses.replace(llama, architecture="OtherForCausalLM"))
    with pytest.raises(LensworksError, match="expects a FamilySpec, got dict"):
        register_family({"architecture": "X"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        llama.head = "x"  # type: ignore[misc]


def test_a_new_family_is_one_spec(tmp_path):
    """A renamed copy of the Llama spec reads a Llama checkpoint saved under the new name; no
    loader code changes."""
    src = hf_dir("llama")
    dst = tmp_path / "mine"
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["architectures"] = ["MyLlamaForCausalLM"]
    (dst / "config.json").write_text(json.dumps(cfg))
    if TL_MAJOR < 4:
        with pytest.raises(LensworksError, match="unsupported architecture MyLlamaForCausalLM"):
            load_model(dst)
    else:  # unregistered: TransformerLens 4's bridge boots it (by its model_type, "llama")
        toks = torch.tensor([[1, 5, 9, 40, 7, 2]])
        with torch.no_grad():
            torch.testing.assert_close(load_model(dst)(toks), load_model(src)(toks), rtol=0, atol=0)
    spec = register_family(dataclasses.replace(family_for("LlamaForCausalLM"), architecture="MyLlamaForCausalLM",
                                               family="my-llama"))
    try:
        assert SUPPORTED_ARCHITECTURES["MyLlamaForCausalLM"] == "my-llama"
        mine, ref = load_model(dst), load_model(src)
        if TL_MAJOR < 4:  # TransformerLens 4 keeps no original_architecture
            assert mine.cfg.original_architecture == spec.architecture
        toks = torch.tensor([[1, 5, 9, 40, 7, 2]])
        with torch.no_grad():
            torch.testing.assert_close(mine(toks), ref(toks), rtol=0, atol=0)
    finally:
        _families._REGISTRY.pop("MyLlamaForCausalLM", None)
    assert "MyLlamaForCausalLM" not in SUPPORTED_ARCHITECTURES


def test_one_backend_per_line():
    assert backend() is backend()
    assert backend().line == (4 if TL_MAJOR >= 4 else 3)
    assert type(backend()).__name__ == ("BridgeBackend" if TL_MAJOR >= 4 else "HookedBackend")


def write(only_new: bool = False) -> Path:
    """Record every entry in both modes into :data:`FROZEN` (``only_new``: only the entries the
    copy lacks, every recorded one kept as it is)."""
    old = json.loads(FROZEN.read_text()) if only_new and FROZEN.is_file() else {}
    out = {**old, **{f"{e}/{m}": record(e, m) for e in ENTRIES for m in MODES if f"{e}/{m}" not in old}}
    FROZEN.parent.mkdir(parents=True, exist_ok=True)
    FROZEN.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    return FROZEN


if __name__ == "__main__":
    if sys.argv[1:] not in (["--write"], ["--add"]):
        sys.exit("usage: python tests/test_loader_frozen.py --write | --add  (re-records the frozen copy for this "
                 "line | records only the entries it lacks)")
    import os

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))  # as tests/conftest.py
    print(write(only_new=sys.argv[1:] == ["--add"]))

"""Hugging Face weights are read lazily, tensor by tensor with ``safe_open``, from exactly the files
``model.safetensors.index.json`` names (a stray ``consolidated.safetensors`` is never read), and
``load_model(dir, revision=...)`` picks one of several checkpoints in a directory."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from archs import hf_dir
from hf_families import build_hf_checkpoint
from lensworks import load_model
from lensworks.model import TL_MAJOR, LensworksError
from lensworks.model import _files
from lensworks.model import revisions
from lensworks.model._load import resolve_revision

_INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """hf_dir("llama")'s weights (same seed) in 4 shards with an index."""
    path = build_hf_checkpoint("llama", tmp_path_factory.mktemp("sharded") / "llama", shards=4)
    assert len(list(path.glob("model-*-of-*.safetensors"))) == 4 and (path / _INDEX).is_file()
    return path


@pytest.fixture(scope="module")
def single_model():
    return load_model(hf_dir("llama"))


def _same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_sharded_checkpoint_equals_the_single_file(sharded, single_model):
    _same_weights(load_model(sharded), single_model)


def test_stray_safetensors_files_are_never_read(sharded, single_model, tmp_path):
    """consolidated.safetensors (the original release's layout) and an unreferenced shard-like file
    hold the same names with other shapes and values: reading either would fail or change weights."""
    path = _copy(sharded, tmp_path / "with-stray")
    garbage = {k: torch.full((3,), 7.0) for k in _files.stored_shapes(sharded)}
    save_file(garbage, str(path / "consolidated.safetensors"))
    save_file(garbage, str(path / "model-00005-of-00005.safetensors"))
    _same_weights(load_model(path), single_model)
    one = _copy(hf_dir("llama"), tmp_path / "single-with-stray")
    save_file(garbage, str(one / "consolidated.safetensors"))
    assert [f.name for f in _files.weight_files(one).files] == ["model.safetensors"]
    _same_weights(load_model(one), single_model)


def test_only_a_stray_file_is_refused(tmp_path):
    path = _copy(hf_dir("llama"), tmp_path / "llama")
    (path / "model.safetensors").rename(path / "consolidated.safetensors")
    with pytest.raises(LensworksError, match=r"no weight files.*does not guess.*consolidated\.safetensors"):
        load_model(path)


def test_missing_shard_names_the_index_and_the_shard(sharded, tmp_path):
    path = _copy(sharded, tmp_path / "missing")
    (path / "model-00003-of-00004.safetensors").unlink()
    with pytest.raises(LensworksError, match=r"model\.safetensors\.index\.json names the shard "
                                             r"model-00003-of-00004\.safetensors, which is missing"):
        load_model(path)


def test_index_naming_a_tensor_its_shard_lacks(sharded, tmp_path):
    path = _copy(sharded, tmp_path / "wrong-index")
    index = json.loads((path / _INDEX).read_text())
    name, shard = next((k, v) for k, v in index["weight_map"].items() if v != "model-00001-of-00004.safetensors")
    index["weight_map"][name] = "model-00001-of-00004.safetensors"
    (path / _INDEX).write_text(json.dumps(index))
    with pytest.raises(LensworksError, match=rf"{_INDEX} puts the tensor {name} in model-00001-of-00004"
                                             r"\.safetensors, which holds no such tensor"):
        load_model(path)


def test_headers_only_until_a_tensor_is_asked_for(sharded):
    with _files.LazyWeights(sharded, dtype=torch.bfloat16) as weights:
        shapes, dtypes = weights.shapes(), weights.dtypes()
        assert "lm_head.weight" in weights and "nope" not in weights and len(weights) == len(shapes)
        assert set(dtypes.values()) == {torch.float32} and weights.reads == 0
        t = weights["model.layers.1.mlp.up_proj.weight"]
        assert t.dtype == torch.bfloat16 and tuple(t.shape) == shapes["model.layers.1.mlp.up_proj.weight"]
        assert weights["model.layers.1.mlp.up_proj.weight"] is t and weights.reads == 1  # held: not read again
        stored = load_file(str(hf_dir("llama") / "model.safetensors"))["model.layers.1.mlp.up_proj.weight"]
        assert torch.equal(t, stored.to(torch.bfloat16))  # the same seed, unsharded


@pytest.mark.skipif(TL_MAJOR >= 4, reason="under TransformerLens 4 transformers reads the weights (boot_transformers)")
def test_weights_are_read_one_by_one_with_safe_open(sharded, single_model, monkeypatch):
    """load_file (all of a file at once) is never called; every stored tensor is fetched once,
    by name, through safe_open."""
    import safetensors.torch

    def no_load_file(*a, **k):
        raise AssertionError("load_file read a whole file")

    monkeypatch.setattr(safetensors.torch, "load_file", no_load_file)
    fetched: list[str] = []
    real_open = _files._safe_open

    class Spy:
        def __init__(self, handle):
            self._h = handle

        def get_tensor(self, name):
            fetched.append(name)
            return self._h.get_tensor(name)

        def __getattr__(self, name):
            return getattr(self._h, name)

    monkeypatch.setattr(_files, "_safe_open", lambda path: Spy(real_open(path)))
    _same_weights(load_model(sharded), single_model)
    assert sorted(fetched) == sorted(_files.stored_shapes(sharded))  # each tensor once, none twice


# --------------------------------------------------------------------------- revision=


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    """A Pythia-like folder of training checkpoints: step2000 and step10000 (other weights)."""
    root = tmp_path_factory.mktemp("pythia-tiny")
    _copy(hf_dir("neox"), root / "step10000")
    build_hf_checkpoint("neox", root / "step2000", seed=1)
    (root / "notes").mkdir()  # a folder without a checkpoint is no revision
    return root


def test_revision_picks_the_step_folder(steps):
    early = load_model(steps, revision="step2000")
    _same_weights(early, load_model(steps / "step2000"))
    late = load_model(steps, revision="step10000")
    assert not torch.equal(early.W_E, late.W_E)
    assert revisions(steps) == ["step2000", "step10000"]  # natural order


def test_unknown_revision_lists_the_available_ones(steps):
    with pytest.raises(LensworksError, match=r"revision 'step3000': .* holds no checkpoint of that name; "
                                             r"its revisions: \['step2000', 'step10000'\]"):
        load_model(steps, revision="step3000")
    with pytest.raises(LensworksError, match="not a path out of it"):
        resolve_revision(steps / "step2000", "../step10000")
    with pytest.raises(LensworksError, match="not a local directory"):
        load_model("EleutherAI/pythia-70m", revision="step1000")


def test_revision_in_a_hugging_face_cache_folder(tmp_path):
    """models--org--name/refs/<revision> holds a commit hash; snapshots/<hash>/ holds the files."""
    cache = tmp_path / "models--EleutherAI--pythia-tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    _copy(hf_dir("neox"), cache / "snapshots" / commit)
    (cache / "refs").mkdir()
    (cache / "refs" / "step143000").write_text(commit)
    assert resolve_revision(cache, "step143000") == cache / "snapshots" / commit
    assert resolve_revision(cache, commit) == cache / "snapshots" / commit
    assert revisions(cache) == ["step143000"]
    assert load_model(cache, revision="step143000").cfg.parallel_attn_mlp


# --------------------------------------------------------------------------- processing one block at a time


@pytest.mark.skipif(TL_MAJOR >= 4, reason="TransformerLens 3's load_and_process_state_dict is the reference")
@pytest.mark.parametrize("flags", [(True, True, True), (True, False, False), (False, True, True), (False, False, False)],
                         ids=["all", "fold_ln", "centre", "none"])
def test_processing_block_by_block_equals_load_and_process_state_dict(flags):
    """lensworks' loader runs TransformerLens's processing one block at a time (peak memory); the
    weights equal those of HookedTransformer.load_and_process_state_dict bit for bit."""
    from hf_families import REGISTERED_FAMILIES
    from lensworks.model import _hf
    from lensworks.model._core import HookedTransformer
    from lensworks.model._process import load_and_process
    from lensworks.model._tlconfig import make_cfg

    fold_ln, centre, unembed = flags
    kw = dict(fold_ln=fold_ln, center_writing_weights=centre, center_unembed=unembed, fold_value_biases=True)
    for family in REGISTERED_FAMILIES:  # the families TransformerLens 3 reads
        path = hf_dir(family)
        spec, raw = _hf.read_config(path)
        fields = _hf.config_fields(spec, raw, where=str(path))
        models = []
        for ours in (True, False):
            cfg = make_cfg({**fields, "dtype": torch.float32, "device": "cpu", "init_weights": False}, where=str(path))
            sd = _hf.read_converted(path, spec, raw, cfg, dtype=torch.float32)
            model = HookedTransformer(cfg, tokenizer=None, move_to_device=False)
            if ours:
                load_and_process(model, sd, **kw)
                assert not sd  # emptied as it was loaded
            else:
                model.load_and_process_state_dict(sd, **kw)
            models.append(model)
        assert models[0].cfg.normalization_type == models[1].cfg.normalization_type, family
        _same_weights(*models)

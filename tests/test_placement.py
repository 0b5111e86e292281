"""Splitting a model over devices: ``load_model(device_map=..., max_memory=..., n_devices=...)``.

This machine has one CPU and no GPU, so a real split is not exercised here (benchmarks/
bench_device_map.py measures one on a machine with two GPUs). What is checked: the options reach
TransformerLens 4's ``boot_transformers`` and Hugging Face's dispatcher places the layers (every
module on "cpu" here), the model then gives the same logits and the same analysis numbers as a
plain load, and every malformed or impossible request is refused before any weight is read.
"""

from __future__ import annotations

import pytest
import torch

from archs import arch_checkpoint, hf_dir
from lensworks import load_model
from lensworks.circuits import head_scores
from lensworks.geometry import residual_stats
from lensworks.model import TL_MAJOR, LensworksError, model_facts

tl4_only = pytest.mark.skipif(TL_MAJOR < 4, reason="device_map goes to TransformerLens 4's bridge")

_TOKS = torch.tensor([[1, 5, 9, 40, 7, 2, 11, 12]])


def _logits(model):
    with torch.no_grad():
        return model(_TOKS)


@tl4_only
@pytest.mark.parametrize("options", [
    dict(device_map="auto"),
    dict(device_map="sequential", max_memory={"cpu": "2GiB"}),
    dict(device_map={"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": torch.device("cpu"),
                     "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}),
], ids=["auto", "budget", "by-module"])
def test_a_device_map_loads_the_same_model(options):
    path = hf_dir("llama")
    plain, placed = load_model(path), load_model(path, **options)
    torch.testing.assert_close(_logits(placed), _logits(plain), rtol=0, atol=0)
    assert model_facts(placed).devices == ("cpu",)
    texts = {"a": ["the cat sat on the mat", "a dog ran"], "b": ["one two three four", "five six"]}
    a = residual_stats(plain, texts, progress=False)
    b = residual_stats(placed, texts, progress=False)
    for name in a.datasets:
        torch.testing.assert_close(b.mean[name], a.mean[name], rtol=0, atol=0)
    torch.testing.assert_close(head_scores(placed, "induction").scores, head_scores(plain, "induction").scores,
                               rtol=0, atol=0)


def test_one_device_counts_as_no_split():
    model = load_model(hf_dir("llama"), n_devices=1)
    torch.testing.assert_close(_logits(model), _logits(load_model(hf_dir("llama"))), rtol=0, atol=0)
    assert model_facts(model).devices == (str(model_facts(model).device),)


@pytest.mark.parametrize(("options", "match"), [
    (dict(n_devices=0), "n_devices must be a positive integer"),
    (dict(n_devices=2.0), "n_devices must be a positive integer"),
    (dict(n_devices=64), "splits the model over 64 CUDA devices; this machine has"),
    (dict(max_memory={"cpu": "1GiB"}), "max_memory budgets a split: give device_map="),
])
def test_bad_split_options_are_refused_before_loading(options, match):
    with pytest.raises(LensworksError, match=match):
        load_model(hf_dir("llama"), **options)


@pytest.mark.parametrize(("options", "match"), [
    (dict(device_map="everywhere"), "device_map must be one of"),
    (dict(device_map={"model.layers.0": "meta"}), "on 'meta'"),
    (dict(device_map={"model.layers.0": ["cuda:0"]}), "maps module names"),
    (dict(device_map=3), "strategy string or a dict"),
    (dict(device_map="auto", device="cpu"), "give device= or device_map=, not both"),
    (dict(device_map="auto", max_memory="20GiB"), "max_memory maps devices to budgets"),
])
def test_bad_device_maps_are_refused(options, match):
    if TL_MAJOR < 4:
        match = "device_map needs TransformerLens 4"
    with pytest.raises(LensworksError, match=match):
        load_model(hf_dir("llama"), **options)


@tl4_only
def test_a_device_map_for_a_transformerlens_format_checkpoint_is_refused(tmp_path):
    ckpt, _ = arch_checkpoint("attn-only", tmp_path)
    with pytest.raises(LensworksError, match="split Hugging Face checkpoint directories"):
        load_model(ckpt, device_map="auto")


def test_a_model_object_with_split_options_is_refused():
    model = load_model(hf_dir("llama"))
    with pytest.raises(LensworksError, match="returns model objects as they are"):
        load_model(model, n_devices=1)


def test_the_command_line_passes_the_split_options(tmp_path, capsys):
    from lensworks.cli import main

    argv = ["heads", str(hf_dir("llama")), "--device-map", "auto", "--json", str(tmp_path / "h.json")]
    code = main(argv)
    err = capsys.readouterr().err
    if TL_MAJOR < 4:
        assert code != 0 and "device_map needs TransformerLens 4" in err
    else:
        assert code == 0 and (tmp_path / "h.json").is_file(), err[-500:]
    assert main(["heads", str(hf_dir("llama")), "--n-devices", "64"]) != 0
    assert "64 CUDA devices" in capsys.readouterr().err

"""Bad input gets a clear LensworksError, never a plausible number, a traceback or a broken file (issue 10)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import CHAR_VOCAB, save_checkpoint, tiny_model, tl_config, tl_state_dict
from lensworks import geometry, probes, report
from lensworks.circuits import composition_scores, find_induction_heads, head_scores
from lensworks.cli import main
from lensworks.model import TL_MAJOR, LensworksError, as_tokens, check_token_tensor, encode_text, load_model, save_model, text_windows
from lensworks.model._io import atomic_path, check_writable, write_atomic

TEXT = "def f x\n    return x 1 and the rest.\n" * 40


@pytest.fixture(scope="module")
def overflowing():
    """LN + MLP model whose block-1 MLP output overflows to inf although every weight is finite."""
    model = tiny_model(seed=7, n_layers=3, attn_only=False, d_mlp=32, n_ctx=32, vocab=CHAR_VOCAB)
    with torch.no_grad():
        model.blocks[1].mlp.W_out.mul_(1e38)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    return model


# --------------------------------------------------------------------------- non-finite activations


@pytest.mark.parametrize("analysis", ["residual_stats", "block_ablation", "block_decomposition", "logit_lens",
                                      "update_alignment", "probe_inputs", "unlikely_token_usage"])
def test_overflowing_activations_are_named(overflowing, analysis):
    windows = text_windows(overflowing, TEXT, width=24)[:8]
    calls = {
        "residual_stats": lambda: geometry.residual_stats(overflowing, {"a": windows[:4], "b": windows[4:]}, progress=False),
        "block_ablation": lambda: geometry.block_ablation(overflowing, windows, progress=False),
        "block_decomposition": lambda: geometry.block_decomposition(overflowing, windows, progress=False),
        "logit_lens": lambda: geometry.logit_lens(overflowing, windows, progress=False),
        "update_alignment": lambda: geometry.update_alignment(overflowing, windows, progress=False),
        "probe_inputs": lambda: probes.probe_inputs(overflowing, windows, progress=False),
        "unlikely_token_usage": lambda: probes.unlikely_token_usage(overflowing, windows, progress=False),
    }
    with pytest.raises(LensworksError, match=r"the activation blocks\.[12]\.hook_\w+ holds \d+ (NaN|inf)"):
        calls[analysis]()


def test_overflowing_patterns_are_refused(overflowing):
    # TransformerLens 3 zeroes NaN patterns; the row check turns that into an error, not a 0.0 score.
    # TransformerLens 4 keeps the NaN, which the activation check names where it enters.
    tl4 = r"hook_pattern holds \d+ NaN.*overflows"
    with pytest.raises(LensworksError, match="do not sum to 1.*overflowed" if TL_MAJOR < 4 else tl4):
        head_scores(overflowing, "induction", seq_len=8, n_seqs=2)
    with pytest.raises(LensworksError, match="do not sum to 1" if TL_MAJOR < 4 else tl4):
        find_induction_heads(overflowing, seq_len=8, n_seqs=2)


def test_finite_model_is_not_refused():
    model = tiny_model(seed=7, n_layers=2, attn_only=False, d_mlp=32, n_ctx=32, vocab=CHAR_VOCAB)
    windows = text_windows(model, TEXT, width=24)[:4]
    res = geometry.block_ablation(model, windows, progress=False)
    assert torch.isfinite(res.drop_mlp_kl).all() and float(res.drop_mlp_kl.max()) > 0


# --------------------------------------------------------------------------- checkpoints


def test_cfg_to_dict_checkpoint_with_numpy_scalars_loads(tmp_path, attn_model):
    cfg = tl_config(attn_model)
    import numpy as np

    cfg["initializer_range"] = np.float64(0.02)  # what HookedTransformerConfig computes by default
    cfg["attn_scale"] = np.float64(math.sqrt(attn_model.cfg.d_head))
    torch.save({"cfg": cfg, "state_dict": tl_state_dict(attn_model)}, tmp_path / "ckpt.pt")
    loaded = load_model(tmp_path / "ckpt.pt")
    toks = torch.randint(0, attn_model.cfg.d_vocab, (2, 8), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded(toks), attn_model(toks))


def test_pickled_code_is_refused_with_a_plain_reason(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"cfg": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(LensworksError) as err:
        load_model(tmp_path / "evil.pt")
    msg = str(err.value)
    assert "\x1b[" not in msg and "\n" not in msg
    assert "needs unpickling code" in msg and "system" in msg and "safetensors" in msg


@pytest.mark.parametrize(("field", "value", "match"), [
    ("d_vocab", 10**7, r"embed\.W_E has shape \(50, 32\) but the config declares \(10000000, 32\)"),
    ("n_layers", "2", "'n_layers' must be a positive integer, got '2'"),
    ("d_model", 2.5, "'d_model' must be a positive integer, got 2.5"),
    ("n_ctx", -3, "'n_ctx' must be a positive integer"),
    ("n_layers", 3, r"n_layers=3 but the weights hold blocks \[0, 1\]"),
    ("n_layers", 10**9, r"n_layers=1000000000 but the weights hold blocks \[0, 1\]"),
    ("d_head", 4, r"blocks\.0\.attn\.W_Q has shape"),
])
def test_config_is_validated_before_allocation(tmp_path, attn_model, field, value, match):
    cfg = {**tl_config(attn_model), field: value}
    torch.save({"cfg": cfg, "state_dict": tl_state_dict(attn_model)}, tmp_path / "bad.pt")
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(LensworksError, match=match):
        load_model(tmp_path / "bad.pt")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 200e6  # nothing sized by the bogus config was allocated


def test_mistyped_name_gets_close_matches_not_every_model():
    with pytest.raises(LensworksError) as err:
        load_model("induction2l")
    msg = str(err.value)
    assert "did you mean 'induction-2l'" in msg and len(msg) < 400


def test_zoo_names_load_by_name():
    assert load_model("induction-2l").cfg.n_layers == 2


@pytest.mark.parametrize(("device", "match"), [("blah", "not a torch device"), ("cuda:7", "CUDA|device"),
                                               ("mps", "MPS|device")])
def test_bad_devices_fail_before_loading(device, match):
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has the device")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(LensworksError, match=match):
        load_model("induction-2l", device=device)


# --------------------------------------------------------------------------- atomic writes


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "report.html"
    target.write_text("old page")

    def boom(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", boom)
    with pytest.raises(LensworksError, match="cannot write .*report.html: No space left on device"):
        write_atomic(target, "new page")
    monkeypatch.undo()
    assert target.read_text() == "old page"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left behind


def test_atomic_path_replaces_whole_files(tmp_path):
    target = tmp_path / "sub" / "x.json"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("{}")
        assert not target.exists()  # nothing visible until the block succeeds
    assert json.loads(target.read_text()) == {}


def test_concurrent_writers_never_interleave(tmp_path):
    target = tmp_path / "page.html"
    code = (
        "import sys\nfrom lensworks.model._io import write_atomic\n"
        "for i in range(30):\n    write_atomic(sys.argv[1], sys.argv[2] * 200_000)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(target), c]) for c in "ab"]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    text = target.read_text()
    assert len(text) == 200_000 and len(set(text)) == 1


@pytest.mark.skipif(TL_MAJOR >= 4, reason="save_model writes TransformerLens 3 checkpoints only; a TransformerBridge "
                    "is refused by design")
def test_save_model_failure_keeps_previous_checkpoint(tmp_path, mlp_model, monkeypatch):
    save_model(mlp_model, tmp_path / "ckpt")
    before = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()}
    import safetensors.torch

    def boom(*args, **kwargs):
        raise OSError(27, "File too large")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises((LensworksError, OSError)):
        save_model(mlp_model, tmp_path / "ckpt", overwrite=True)
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()}
    assert after == before
    load_model(tmp_path / "ckpt")


def test_check_writable(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(LensworksError, match="is a directory"):
        check_writable(tmp_path)
    with pytest.raises(LensworksError, match="is a file, not a directory"):
        check_writable(tmp_path / "file" / "out.json")
    assert check_writable(tmp_path / "new" / "deeper" / "out.json") == tmp_path / "new" / "deeper" / "out.json"


# --------------------------------------------------------------------------- the CLI


def test_cli_refuses_unwritable_output_before_computing(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    import lensworks.model

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(lensworks.model, "load_model", must_not_load)
    for argv in (["heads", "--json", str(tmp_path / "file" / "o.json")],
                 ["report", "-o", str(tmp_path / "file" / "r.html")],
                 ["geometry", "--html", str(tmp_path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and "error:" in err


def test_cli_user_errors_are_one_line(capsys):
    for argv in (["heads", "--device", "blah"], ["heads", "no-such-model"], ["heads", "/no/such/dir/"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("lensworks heads: error:")


def test_cli_debug_shows_the_traceback():
    with pytest.raises(LensworksError):
        main(["heads", "--device", "blah", "--debug"])


def test_cli_unexpected_errors_are_one_line_with_a_hint(capsys, monkeypatch):
    import lensworks.cli.heads as ccli

    monkeypatch.setattr(ccli, "run", lambda args: 1 / 0, raising=False)
    parser_func = None

    def broken(args):
        raise ZeroDivisionError("division by zero")

    from lensworks import cli

    real = cli.build_parser

    def patched():
        parser = real()
        sub = next(a for a in parser._actions if a.dest == "command")
        nonlocal parser_func
        sub.choices["heads"].set_defaults(func=broken)
        return parser

    monkeypatch.setattr(cli, "build_parser", patched)
    assert main(["heads"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ZeroDivisionError" in err and "--debug" in err


def test_cli_closed_pipe_exits_quietly():
    code = "import sys\nfrom lensworks.cli import main\nsys.exit(main(['heads']))"
    proc = subprocess.run(f"{sys.executable} -c \"{code}\" | head -c 10", shell=True, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- the report says what it read


def test_report_states_the_fallback_text(attn_model, mlp_model, tmp_path):
    results = report.analyse(mlp_model, n_prompts=4, prompt_len=24, progress=False)
    assert list(results) == ["circuits", "geometry", "probes", "causal"]
    reads = results.data
    assert [d.analyses.split(":")[0] for d in reads][:2] == ["circuits", "geometry"]
    assert any(d.fallback for d in reads)
    page = report.build(results, tmp_path / "r.html", model=mlp_model).read_text()
    assert "Data read" in page and "Fallback text." in page and "--text FILE" in page
    given = report.analyse(mlp_model, text=TEXT, n_prompts=4, prompt_len=24, progress=False)
    assert not any(d.fallback for d in given.data)
    assert any(d.source.startswith("the text given") and d.tokens_per_window == 24 for d in given.data)
    page = report.build(given, tmp_path / "g.html", model=mlp_model).read_text()
    assert "Fallback text." not in page and f"the text given ({len(TEXT):,} characters)" in page
    # no tokenizer: random tokens, said plainly
    none = report.analyse(attn_model, n_prompts=4, prompt_len=24, progress=False)
    assert any("random token sequences" in d.source and "no tokenizer" in d.note for d in none.data)


def test_report_cli_notes_the_fallback_for_a_users_checkpoint(tmp_path, mlp_model, capsys):
    save_checkpoint(mlp_model, tmp_path / "ckpt")
    assert main(["report", str(tmp_path / "ckpt"), "-o", str(tmp_path / "r.html"), "--n-prompts", "2",
                 "--prompt-len", "16", "--no-progress"]) == 0
    assert "no --text given" in capsys.readouterr().err


# --------------------------------------------------------------------------- small API edges


def test_small_api_edges(mlp_model):
    scores = head_scores(mlp_model, "previous_token", seq_len=8, n_seqs=2)
    for bad in (2.5, "3", True, 0):
        with pytest.raises(LensworksError, match="k must be"):
            scores.top(bad)
    comp = composition_scores(mlp_model, "K", progress=False)
    with pytest.raises(LensworksError, match="k must be an integer"):
        comp.top(2.5)
    approx = geometry.NeighbourApproximation.fit(mlp_model, TEXT, window=3, progress=False)
    for bad in (10**9, -1):
        with pytest.raises(LensworksError, match=r"index must be in \[0, "):
            approx.window_text(bad)
    with pytest.raises(LensworksError, match="finite"):
        approx.tune(TEXT[:200], threshold_grid=[float("nan")], progress=False)
    with pytest.raises(LensworksError, match="finite"):
        approx.tune(TEXT[:200], weight_grid=[float("inf")], progress=False)


# --------------------------------------------------------------------------- property-based


token_tensors = st.one_of(
    st.lists(st.integers(min_value=-5, max_value=80), min_size=0, max_size=12),
    st.lists(st.lists(st.integers(min_value=-3, max_value=60), min_size=1, max_size=6), min_size=1, max_size=3),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=6),
    st.text(max_size=20),
    st.none(),
    st.integers(),
)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=token_tensors)
def test_property_malformed_tokens_give_a_result_or_a_lensworks_error(mlp_model, data):
    try:
        tokens = torch.tensor(data) if isinstance(data, list) and data and not isinstance(data[0], list) else data
        if isinstance(data, list) and data and isinstance(data[0], list):
            tokens = torch.tensor([row + [0] * (6 - len(row)) for row in data])
    except (TypeError, ValueError, RuntimeError, OverflowError):
        tokens = data
    for fn in (lambda: check_token_tensor(mlp_model, tokens), lambda: as_tokens(mlp_model, tokens),
               lambda: head_scores(mlp_model, "induction", tokens=tokens)):
        try:
            fn()
        except LensworksError:
            pass


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=40))
def test_property_any_text_gives_tokens_or_a_lensworks_error(mlp_model, text):
    try:
        ids = encode_text(mlp_model, text)
    except LensworksError as exc:
        assert "\n" not in str(exc)
        return
    assert ids.dtype == torch.long and (ids >= 0).all() and (ids < mlp_model.cfg.d_vocab).all()


config_values = st.one_of(st.integers(min_value=-3, max_value=10**8), st.floats(allow_nan=True), st.text(max_size=4),
                          st.none(), st.booleans())


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["n_layers", "d_model", "n_heads", "d_head", "n_ctx", "d_vocab", "d_mlp", "act_fn",
                              "normalization_type", "positional_embedding_type"]), value=config_values)
def test_property_malformed_configs_give_a_model_or_a_lensworks_error(tmp_path_factory, attn_model, field, value):
    path = tmp_path_factory.mktemp("cfg") / "ckpt.pt"
    torch.save({"cfg": {**tl_config(attn_model), field: value}, "state_dict": tl_state_dict(attn_model)}, path)
    try:
        model = load_model(path)
    except LensworksError as exc:
        assert "\x1b[" not in str(exc)
        return
    assert model.cfg.d_model == attn_model.cfg.d_model


def test_token_id_map_vocabulary_is_mapped_by_id(tmp_path, mlp_model):
    out = save_checkpoint(mlp_model, tmp_path / "ckpt")
    vocab = json.loads((out / "vocab.json").read_text())
    shuffled = list(reversed(range(len(vocab))))
    (out / "vocab.json").write_text(json.dumps({vocab[i]: i for i in shuffled}))  # keys out of id order
    loaded = load_model(out)
    assert loaded.to_str_tokens("the end", prepend_bos=False) == mlp_model.to_str_tokens("the end", prepend_bos=False)
    (out / "vocab.json").write_text(json.dumps({t: 0 for t in vocab}))
    with pytest.raises(LensworksError, match="each id 0..* exactly once"):
        load_model(out)

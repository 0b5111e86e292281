"""Thread choice: a busy machine is not oversubscribed, and torch's setting is always restored."""

from __future__ import annotations

import pytest
import torch

import lensworks._threads as T
from lensworks.errors import LensworksError


@pytest.fixture(autouse=True)
def fresh_measurement(monkeypatch):
    monkeypatch.setitem(T._CACHE, "at", -1e9)
    monkeypatch.delenv("LENSWORKS_THREADS", raising=False)


def test_other_load_subtracts_this_process(monkeypatch):
    """Planted /proc/stat readings: 4 cores, 3 busy over the window, 1 of them this process."""
    readings = iter([(1000, 4000), (1300, 4400)])  # 300 of 400 jiffies busy -> 3 cores of 4
    clock = iter([0.0, 0.0, 1.0, 1.0])  # process_time, monotonic (twice each)
    monkeypatch.setattr(T, "_busy_jiffies", lambda: next(readings))
    monkeypatch.setattr(T.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(T.time, "sleep", lambda s: None)
    times = {"process": iter([10.0, 11.0]), "mono": iter([0.0, 0.0, 1.0, 1.0, 1.0])}
    monkeypatch.setattr(T.time, "process_time", lambda: next(times["process"]))
    monkeypatch.setattr(T.time, "monotonic", lambda: next(times["mono"]))
    del clock
    assert T.other_load() == pytest.approx(2.0)


@pytest.mark.parametrize("load, want", [(0.0, 2), (0.2, 2), (0.5, 1), (0.9, 1), (1.6, 1), (7.0, 1)])
def test_busy_cores_are_left_alone(monkeypatch, load, want):
    monkeypatch.setattr(T, "_cores", lambda: 2)
    monkeypatch.setattr(T, "other_load", lambda: load)
    with T.using_threads(2):  # torch allows 2 in this block, whatever the machine
        assert T.choose_threads() == want


def test_an_explicit_number_wins_and_bad_ones_are_refused(monkeypatch):
    assert T.choose_threads(3) == 3
    monkeypatch.setenv("LENSWORKS_THREADS", "1")
    assert T.choose_threads() == 1
    monkeypatch.setenv("LENSWORKS_THREADS", "two")
    with pytest.raises(LensworksError, match="LENSWORKS_THREADS must be a positive integer, got 'two'"):
        T.choose_threads()
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(LensworksError, match="threads must be a positive integer"):
            T.choose_threads(bad)


def test_torch_setting_is_restored_even_on_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with T.using_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_analyses_run_under_the_choice_and_nested_ones_do_not_choose_again(monkeypatch, attn_model):
    from lensworks.circuits import copying_scores

    seen = []
    monkeypatch.setattr(T, "choose_threads", lambda n=None: seen.append(n) or 1)
    before = torch.get_num_threads()
    copying_scores(attn_model, baseline=False)
    assert seen == [None] and torch.get_num_threads() == before
    seen.clear()
    with T.using_threads(1):
        copying_scores(attn_model, baseline=False)
    assert seen == [1]  # only the outer block chose


def test_cli_threads_anywhere_on_the_line(capsys):
    from lensworks.cli import main

    assert main(["heads", "induction-2l", "--top", "1", "--n-seqs", "2", "--threads", "1"]) == 0
    assert main(["--threads=1", "heads", "induction-2l", "--top", "1", "--n-seqs", "2"]) == 0
    assert main(["heads", "--threads", "0"]) == 2
    assert "--threads: expected a positive integer, got '0'" in capsys.readouterr().err

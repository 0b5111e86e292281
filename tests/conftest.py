"""Session-wide tiny models. Heavier demo models are loaded only by tests that need them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from lensworks.model import TL_MAJOR  # noqa: E402

#: Under TransformerLens 4 (no HookedTransformer), only the line-agnostic tests run: the
#: architecture matrix, Hugging Face loading and the cross-line comparison. The rest build
#: HookedTransformer fixtures directly.
LINE_AGNOSTIC = {"test_architectures.py", "test_architectures_report.py", "test_hf_loading.py", "test_tl_lines.py",
                 "test_bridge.py", "test_foreign_checkpoints.py", "test_property_args.py",
                 "test_hostile_round2.py", "test_model_facts.py", "test_defaults.py", "test_loader_frozen.py"}
if TL_MAJOR >= 4:
    collect_ignore = [p.name for p in Path(__file__).parent.glob("test_*.py") if p.name not in LINE_AGNOSTIC]
else:
    from helpers import CHAR_VOCAB, tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def attn_model():
    """2 layers, 4 heads, attention only, d_vocab 50, no tokenizer."""
    return tiny_model(seed=1)


@pytest.fixture(scope="session")
def mlp_model():
    """3 layers with MLPs and LayerNorm, character vocabulary with BOS."""
    return tiny_model(seed=2, n_layers=3, attn_only=False, d_mlp=64, vocab=CHAR_VOCAB)


@pytest.fixture(scope="session")
def gqa_model():
    """Grouped-query attention: 4 query heads sharing 2 key/value heads."""
    return tiny_model(seed=3, n_heads=4, n_key_value_heads=2, n_layers=3)


@pytest.fixture(scope="session")
def char_model():
    """2 attention-only layers with a character vocabulary (BOS included)."""
    return tiny_model(seed=4, vocab=CHAR_VOCAB)

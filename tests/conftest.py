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
# One thread per worker under pytest -n (the Makefile runs one worker per core), else up to two.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))

from lensworks.model import TL_MAJOR  # noqa: E402

from helpers import CHAR_VOCAB, tiny_model  # noqa: E402

#: Test files that need TransformerLens 3 (HookedTransformer, transformer_lens.utils, ...), with the
#: reason; under TransformerLens 4 they are not collected. Every other file runs on both lines: the
#: tiny models of tests/helpers.py load as TransformerBridges there.
NEEDS_TL3: dict[str, str] = {}
#: Files that need nothing of TransformerLens 3 but run on that line only, to keep CI under 15
#: minutes: what they check does not depend on the line (each reason says why).
ONE_LINE_FOR_TIME: dict[str, str] = {
    "test_notebooks.py": "the notebooks call the same public analyses the architecture tests check on both "
                         "lines (about 100 s per run)",
    "test_browser.py": "headless Chromium renders the same HTML page whatever line computed its numbers",
    "test_api_docs.py": "the API reference is read from the sources by static analysis (griffe), the same "
                        "whatever TransformerLens is installed (about 12 s)",
}
if TL_MAJOR >= 4:
    collect_ignore = sorted(NEEDS_TL3) + sorted(ONE_LINE_FOR_TIME)


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

"""The one place that knows TransformerLens and Hugging Face checkpoints.

Everything else in lensworks asks this package for weights (``W_Q`` ... ``W_U``, with
grouped-query heads mapped to query heads), hook names, tokenization and the facts every
analysis must decide the same way (BOS, which streams exist, token labels, default sequence
lengths, the processing record), so that a TransformerLens difference is handled once, here.

- :mod:`._core`: hook names, index checks, weight access.
- :mod:`._tokens`: vocabulary tokenizers, token checks, encoding text, token labels.
- :mod:`._modelfacts`: :class:`ModelFacts`, every model fact decided once (streams, hooks, BOS,
  device, working dtype, positional embedding, backend), cached per model.
- :mod:`._facts`: the helpers analyses call (streams, BOS, default lengths, random controls, the
  processing record), answered from the model's facts.
- :mod:`._load`: loading checkpoints, read and checked once for both TransformerLens lines, built by
  :mod:`._backend` (:mod:`._hooked` for TransformerLens 3, :mod:`._bridge` for 4); :mod:`._save`: saving.
- :mod:`._families`: :class:`FamilySpec`, one per Hugging Face architecture, in a registry
  (:func:`register_family`, :func:`family_for`); the built-in ones in :mod:`._specs`;
  :mod:`._hf`: local Hugging Face directories read through their spec.
"""

from lensworks.model._core import (
    HookedTransformer,
    Model,
    LensworksError,
    NonFiniteError,
    check_float,
    check_head,
    check_int,
    check_layer,
    head_labels,
    hook_name,
)
from lensworks.model._weights import attention_weights, embedding, unembedding
from lensworks.model._compat import TL_MAJOR, check_model, is_bridge, is_model
from lensworks.model._facts import (
    ALL_STREAMS,
    RESIDUAL_STREAMS,
    default_seq_len,
    has_resid_mid,
    has_stream,
    missing_stream_error,
    model_streams,
    processing_state,
    random_copy,
    uses_bos,
)
from lensworks.model._families import SUPPORTED_ARCHITECTURES, FamilySpec, family_for, register_family
from lensworks.model import _specs  # noqa: F401,E402  (registers the built-in families)
from lensworks.model._modelfacts import ModelFacts, model_facts
from lensworks.model._compat import capture_hooks, logits_from_block
from lensworks.model._load import load_model, revisions
from lensworks.model._save import save_model
from lensworks.model._tokens import (
    BOS_NAMES,
    as_tokens,
    bos_token_id,
    check_encodable,
    encodable_part,
    check_token_tensor,
    encode_batch,
    encode_text,
    model_vocab,
    text_windows,
    token_label,
    token_strings,
    vocab_tokenizer,
)

__all__ = [
    "HookedTransformer",
    "Model",
    "LensworksError",
    "NonFiniteError",
    "load_model",
    "revisions",
    "ModelFacts",
    "model_facts",
    "capture_hooks",
    "logits_from_block",
    "save_model",
    "check_model",
    "is_model",
    "is_bridge",
    "TL_MAJOR",
    "SUPPORTED_ARCHITECTURES",
    "FamilySpec",
    "register_family",
    "family_for",
    "hook_name",
    "check_layer",
    "check_float",
    "check_head",
    "check_int",
    "head_labels",
    "attention_weights",
    "embedding",
    "unembedding",
    "processing_state",
    "has_resid_mid",
    "has_stream",
    "model_streams",
    "missing_stream_error",
    "uses_bos",
    "default_seq_len",
    "random_copy",
    "vocab_tokenizer",
    "model_vocab",
    "bos_token_id",
    "check_token_tensor",
    "check_encodable",
    "encodable_part",
    "as_tokens",
    "encode_text",
    "encode_batch",
    "text_windows",
    "token_label",
    "token_strings",
    "ALL_STREAMS",
    "RESIDUAL_STREAMS",
    "BOS_NAMES",
]

"""Tiny random Hugging Face checkpoints, one per architecture family, saved as a fine-tune would be.

Each checkpoint directory holds ``config.json``, ``generation_config.json``, the weights
(``model.safetensors``, sharded ``model-0000i-of-0000n.safetensors`` plus an index, or
``pytorch_model.bin``) and a byte-level BPE tokenizer (``tokenizer.json``,
``tokenizer_config.json``, ``special_tokens_map.json``). Everything is built offline from a
seed; nothing is downloaded. Configs are tiny (2 layers, d_model 64, 4 heads of 16, d_mlp 128)
but switch on each family's quirks (partial rotary, GQA/MQA, sliding windows, soft-capping, ...).
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (AutoModelForCausalLM, AutoTokenizer, Gemma2Config, Gemma3TextConfig, GemmaConfig, GPT2Config,
                          GPTJConfig, GPTNeoXConfig, LlamaConfig, MistralConfig, MixtralConfig, PreTrainedConfig,
                          Qwen2Config, Qwen3Config)
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()  # "Writing model shards" / "Loading weights" bars on every save and load

#: Special tokens shared by every family's tokenizer (ids 0..6, in this order).
SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<s>", "</s>", "<unk>", "<bos>", "<eos>", "<pad>")
GEMMA2_SLIDING_WINDOW = 8  # a query attends to itself and the 7 tokens before it
MISTRAL_SLIDING_WINDOW = 16
INIT_RANGE = 0.1  # std of the normal init of weight matrices and embeddings
PERTURB = 0.05  # std of noise added to every parameter, so biases and norm weights are not 0 / 1


@dataclass(frozen=True)
class FamilyCase:
    """Everything the tests need to build one Hugging Face family: adding a family is one entry
    of :data:`FAMILY_CASES` (plus its ``FamilySpec`` in lensworks and, to run every analysis on it,
    one line of tests/archs.py).

    Attributes:
        config: Builds the tiny config from the shared sizes (``vocab_size``, ``hidden_size``,
            ``num_hidden_layers``, ``num_attention_heads``, ``intermediate_size``,
            ``max_position_embeddings``, ``initializer_range`` and the special-token ids).
        bos, eos, pad: The tokenizer's special tokens (names from :data:`SPECIAL_TOKENS`).
        add_bos: Whether the tokenizer prepends BOS (Llama, Mistral and Gemma style).
        bridge_only: Whether only TransformerLens 4 reads the family (no lensworks spec).
    """

    config: Callable[[dict[str, Any]], PreTrainedConfig]
    bos: str = "<|endoftext|>"
    eos: str = "<|endoftext|>"
    pad: str | None = None
    add_bos: bool = False
    #: No ``FamilySpec`` in lensworks: read under TransformerLens 4 only (by its bridge), refused
    #: under TransformerLens 3.
    bridge_only: bool = False


def _gpt2(c: dict[str, Any]) -> PreTrainedConfig:
    return GPT2Config(vocab_size=c["vocab_size"], n_embd=c["hidden_size"], n_layer=c["num_hidden_layers"],
                      n_head=c["num_attention_heads"], n_inner=c["intermediate_size"],
                      n_positions=c["max_position_embeddings"], initializer_range=c["initializer_range"],
                      bos_token_id=c["bos_token_id"], eos_token_id=c["eos_token_id"], pad_token_id=c["pad_token_id"])


def _rope(theta: float, **extra: float) -> dict[str, Any]:
    return {"rope_type": "default", "rope_theta": theta, **extra}


_LLAMA_TOKENS = dict(bos="<s>", eos="</s>", add_bos=True)
_GEMMA_TOKENS = dict(bos="<bos>", eos="<eos>", pad="<pad>", add_bos=True)

#: family -> how to build it. The order is the order of :data:`FAMILIES`.
FAMILY_CASES: dict[str, FamilyCase] = {
    "gpt2": FamilyCase(_gpt2),
    # rotary on the first quarter of each head (4 of 16 dims), parallel attention + MLP
    "neox": FamilyCase(lambda c: GPTNeoXConfig(**c, use_parallel_residual=True, hidden_act="gelu",
                                               rope_parameters=_rope(10000.0, partial_rotary_factor=0.25))),
    "llama": FamilyCase(lambda c: LlamaConfig(**c, num_key_value_heads=2, rope_parameters=_rope(500000.0)),
                        **_LLAMA_TOKENS),
    "mistral": FamilyCase(lambda c: MistralConfig(**c, num_key_value_heads=2, sliding_window=MISTRAL_SLIDING_WINDOW,
                                                  rope_parameters=_rope(1000000.0)), **_LLAMA_TOKENS),
    # multi-query attention, explicit head_dim, embeddings scaled by sqrt(d_model)
    "gemma": FamilyCase(lambda c: GemmaConfig(**c, num_key_value_heads=1, head_dim=16), **_GEMMA_TOKENS),
    # soft caps small enough to bend these tiny logits
    "gemma2": FamilyCase(lambda c: Gemma2Config(**c, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=32,
                                                sliding_window=GEMMA2_SLIDING_WINDOW,
                                                layer_types=["sliding_attention", "full_attention"],
                                                attn_logit_softcapping=1.0, final_logit_softcapping=4.0),
                         **_GEMMA_TOKENS),
    # q/k/v projections carry biases
    "qwen2": FamilyCase(lambda c: Qwen2Config(**c, num_key_value_heads=2, rope_parameters=_rope(1000000.0)),
                        pad="<|endoftext|>"),
    # --- families read through TransformerLens 4's bridge only (no lensworks FamilySpec)
    # q/k RMSNorms, local/global layers, pre+post norms, embeddings scaled by sqrt(d_model)
    "gemma3": FamilyCase(lambda c: Gemma3TextConfig(**c, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                                                    sliding_window=GEMMA2_SLIDING_WINDOW,
                                                    layer_types=["sliding_attention", "full_attention"]),
                         bridge_only=True, **_GEMMA_TOKENS),
    # q/k RMSNorms, grouped-query attention
    "qwen3": FamilyCase(lambda c: Qwen3Config(**c, num_key_value_heads=2, head_dim=16, rope_parameters=_rope(1000000.0)),
                        bridge_only=True),
    # a sparse mixture of 4 experts, 2 per token
    "mixtral": FamilyCase(lambda c: MixtralConfig(**c, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                                                  rope_parameters=_rope(1000000.0)),
                          bridge_only=True, **_LLAMA_TOKENS),
    # parallel attention + MLP sharing one LayerNorm, rotary on 8 of 16 dims with interleaved pairs
    "gptj": FamilyCase(lambda c: GPTJConfig(vocab_size=c["vocab_size"], n_embd=c["hidden_size"],
                                            n_layer=c["num_hidden_layers"], n_head=c["num_attention_heads"],
                                            n_inner=c["intermediate_size"], n_positions=c["max_position_embeddings"],
                                            rotary_dim=8, initializer_range=c["initializer_range"],
                                            bos_token_id=c["bos_token_id"], eos_token_id=c["eos_token_id"]),
                       bridge_only=True),
}

FAMILIES: tuple[str, ...] = tuple(FAMILY_CASES)
#: The families lensworks registers a ``FamilySpec`` for (read on both TransformerLens lines).
REGISTERED_FAMILIES: tuple[str, ...] = tuple(n for n, c in FAMILY_CASES.items() if not c.bridge_only)


#: Fixed English-ish strings for :func:`sample_tokens`.
SAMPLE_TEXTS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog, and the dog does not mind at all.",
    "When Mary and John went to the store, John gave a drink to Mary because she was thirsty.",
    "def parse_args(argv):\n    parser = argparse.ArgumentParser(description='tiny')\n    return parser",
    "One, two, three, four, five; one, two, three, four, five; the pattern repeats again and again.",
)


@functools.lru_cache(maxsize=None)
def _trained_tokenizer_json(vocab_size: int) -> str:
    """Train a byte-level BPE on standard-library source (deterministic per Python version), as JSON."""
    corpus = [inspect.getsource(m) for m in (argparse, textwrap)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok.to_str()


def tokenizer_vocab_size(vocab_size: int = 300) -> int:
    """The number of ids in the trained tokenizer (the model's ``vocab_size``)."""
    return Tokenizer.from_str(_trained_tokenizer_json(vocab_size)).get_vocab_size()


def train_bpe_tokenizer(out_dir: Path, *, vocab_size: int = 300, family: str = "gpt2") -> None:
    """Write a byte-level BPE tokenizer loadable by ``AutoTokenizer.from_pretrained(out_dir)``.

    The BPE is trained once per process and cached; ``family`` picks the BOS/EOS/PAD names and
    whether BOS is prepended (Llama, Mistral and Gemma style), as in the real checkpoints.

    Args:
        out_dir: Directory to write ``tokenizer.json``, ``tokenizer_config.json`` and
            ``special_tokens_map.json`` into (created if missing).
        vocab_size: Target vocabulary size, special tokens and the 256 byte symbols included.
        family: One of :data:`FAMILIES`.
    """
    case = FAMILY_CASES[family]
    bos, eos, pad, add_bos = case.bos, case.eos, case.pad, case.add_bos
    tok = Tokenizer.from_str(_trained_tokenizer_json(vocab_size))
    if add_bos:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                          special_tokens=[(bos, bos_id)]),
        ])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    specials = {"bos_token": bos, "eos_token": eos, "unk_token": "<unk>" if add_bos else eos}
    if pad is not None:
        specials["pad_token"] = pad
    config = {**specials, "tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": add_bos,
              "add_eos_token": False, "model_max_length": 128, "clean_up_tokenization_spaces": False}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")


def make_config(family: str, vocab_size: int = 300) -> PreTrainedConfig:
    """A tiny ``transformers`` config of ``family`` whose quirks are switched on.

    Args:
        family: One of :data:`FAMILIES`.
        vocab_size: Target tokenizer vocabulary size (the model gets the trained size).

    Returns:
        The config, with special-token ids matching :func:`train_bpe_tokenizer`'s tokenizer.
    """
    if family not in FAMILY_CASES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    case = FAMILY_CASES[family]
    tok = Tokenizer.from_str(_trained_tokenizer_json(vocab_size))
    ids = dict(bos_token_id=tok.token_to_id(case.bos), eos_token_id=tok.token_to_id(case.eos),
               pad_token_id=None if case.pad is None else tok.token_to_id(case.pad))
    common = dict(vocab_size=tok.get_vocab_size(), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=128, max_position_embeddings=128, initializer_range=INIT_RANGE, **ids)
    return case.config(common)


def build_hf_checkpoint(family: str, out_dir: Path, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                        safetensors: bool = True, shards: int = 1) -> Path:
    """Build a tiny random ``family`` model and save it, with its tokenizer, into ``out_dir``.

    Weights are drawn with ``torch.manual_seed(seed)`` (std :data:`INIT_RANGE`), then every
    parameter gets Gaussian noise (std :data:`PERTURB`) so biases and norm weights are generic.

    Args:
        family: One of :data:`FAMILIES`.
        out_dir: Directory to save into (created if missing).
        seed: Seed for the weights.
        dtype: dtype the weights are stored in.
        safetensors: ``model*.safetensors`` if true, else ``pytorch_model*.bin``.
        shards: Number of weight files; above 1 an index json is written too.

    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    config = make_config(family)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * PERTURB)
    model = model.to(dtype).eval()
    max_shard_size: int | str = "50GB"
    if shards > 1:  # next-fit packing in state-dict order: the smallest bound giving <= shards files
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        max_shard_size = nbytes // shards + 1
        while _count_shards(model, max_shard_size) > shards:
            max_shard_size = int(max_shard_size * 1.02) + 1
    model.save_pretrained(out_dir, max_shard_size=max_shard_size)
    if not safetensors:
        _safetensors_to_bin(out_dir)
    train_bpe_tokenizer(out_dir, family=family)
    return out_dir


def _count_shards(model: torch.nn.Module, max_shard_size: int) -> int:
    """How many files ``save_pretrained`` would write for ``max_shard_size`` bytes per file."""
    split = split_torch_state_dict_into_shards(model.state_dict(), max_shard_size=max_shard_size)
    return len(split.filename_to_tensors)


def _safetensors_to_bin(out_dir: Path) -> None:
    """Rewrite ``model*.safetensors`` (and index) as ``pytorch_model*.bin``.

    transformers 5's ``save_pretrained`` writes safetensors only (no ``safe_serialization``).
    """
    for path in sorted(out_dir.glob("model*.safetensors")):
        torch.save(load_file(path), out_dir / ("pytorch_" + path.name.removesuffix(".safetensors") + ".bin"))
        path.unlink()
    index = out_dir / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {k: "pytorch_" + v.removesuffix(".safetensors") + ".bin"
                              for k, v in data["weight_map"].items()}
        (out_dir / "pytorch_model.bin.index.json").write_text(json.dumps(data, indent=2) + "\n")
        index.unlink()


def hf_log_probs(out_dir: Path, tokens: torch.Tensor) -> torch.Tensor:
    """Reference log-probabilities from ``transformers`` itself (float32, eager attention).

    Args:
        out_dir: A checkpoint directory from :func:`build_hf_checkpoint`.
        tokens: ``[batch, pos]`` token ids.

    Returns:
        ``[batch, pos, vocab]`` float32 log-probabilities.
    """
    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32, attn_implementation="eager",
                                                 local_files_only=True)  # a local directory, never the hub
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=tokens.long(), use_cache=False).logits
    return torch.log_softmax(logits.float(), dim=-1)


def sample_tokens(out_dir: Path, n_seqs: int = 2, seq_len: int = 24, *, seed: int = 0,
                  random: bool = False) -> torch.Tensor:
    """Token ids for tests, ``[n_seqs, seq_len]``; ``seq_len`` should exceed the sliding windows.

    Args:
        out_dir: A checkpoint directory (its own tokenizer is used).
        n_seqs: Number of sequences.
        seq_len: Tokens per sequence.
        seed: Picks the starting text (or seeds the random ids).
        random: Uniform random ids, specials excluded (BOS first where the tokenizer adds it),
            instead of encoded :data:`SAMPLE_TEXTS`.

    Returns:
        A long tensor of token ids, exactly what ``AutoTokenizer`` gives (BOS included where the
        family prepends it), truncated to ``seq_len``.
    """
    tok = AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
    rows = []
    for i in range(n_seqs):
        if random:
            g = torch.Generator().manual_seed(seed * 1000 + i)
            ids = torch.randint(len(SPECIAL_TOKENS), len(tok), (seq_len,), generator=g).tolist()
            if tok("")["input_ids"] == [tok.bos_token_id]:  # not tok.add_bos_token: False here in v5
                ids = [tok.bos_token_id] + ids[1:]
        else:
            text, k = "", seed + i
            while len(tok(text)["input_ids"]) < seq_len:
                text += SAMPLE_TEXTS[k % len(SAMPLE_TEXTS)] + " "
                k += 1
            ids = tok(text)["input_ids"][:seq_len]
        rows.append(ids)
    return torch.tensor(rows, dtype=torch.long)

"""``bpe-llama``: the subword demo model, a Hugging Face ``LlamaForCausalLM`` directory.

The recipe trains a byte-level BPE tokenizer on the zoo corpus with ``tokenizers``, then a
2-layer Llama-style transformer (RMSNorm, rotary positions, gated SiLU MLP, grouped-query
attention, tied embeddings) with ``transformers`` on CPU, and writes the result as a Hugging
Face checkpoint directory, so the demo exercises ``load_model(dir)`` the way a user's own
checkpoint does. Three quarters of each batch are repeated random token blocks and one quarter
is corpus text: on this mix a previous-token head forms in layer 0 and induction heads in
layer 1 after about 700 steps.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor

from lensworks._heads import HeadId
from lensworks._rng import seeded_rng
from lensworks.model import LensworksError
from lensworks.model._io import write_atomic
from lensworks.zoo._training import optimise, run_with_threads, training_info

__all__ = ["SubwordRecipe", "BPE_LLAMA", "RECIPES", "train_tokenizer", "training_batch", "train", "save", "train_and_save"]

BOS = "<|bos|>"
EOS = "<|endoftext|>"


@dataclasses.dataclass(frozen=True)
class SubwordRecipe:
    """Tokenizer, architecture and optimisation settings of a Hugging Face demo model.

    Attributes:
        name: The zoo name.
        vocab_size: Target BPE vocabulary (256 byte symbols and the two special tokens included).
        hf_config: ``LlamaConfig`` fields (vocabulary and special ids are filled in).
        train_chars: The tokenizer and the text rows read ``zoo.corpus(train_chars)``; the
            rest of the corpus is held out.
        seq_len, batch_size, steps, lr, warmup, weight_decay, seed: Optimisation (AdamW with
            betas (0.9, 0.95), linear warm-up, cosine decay to 10% of ``lr``, clip 1.0).
        repeat_fraction: Share of each batch that is repeated random token blocks.
        summary, training_data, learned: Prose for :func:`lensworks.zoo.describe`.
    """

    name: str
    vocab_size: int
    hf_config: dict[str, Any]
    train_chars: int
    seq_len: int
    batch_size: int
    steps: int
    lr: float
    warmup: int
    weight_decay: float
    repeat_fraction: float
    seed: int
    summary: str
    training_data: str
    learned: str

    def hyper_parameters(self) -> dict[str, Any]:
        """All settings as a JSON-ready dict (``n_layers`` etc. as lensworks names them)."""
        c = self.hf_config
        return dict(
            n_layers=c["num_hidden_layers"], d_model=c["hidden_size"], n_heads=c["num_attention_heads"],
            n_key_value_heads=c["num_key_value_heads"], d_head=c["head_dim"], d_mlp=c["intermediate_size"],
            n_ctx=self.seq_len, d_vocab=self.vocab_size, hf_config=dict(c), train_chars=self.train_chars,
            seq_len=self.seq_len, batch_size=self.batch_size, steps=self.steps, lr=self.lr, warmup=self.warmup,
            weight_decay=self.weight_decay, repeat_fraction=self.repeat_fraction, seed=self.seed,
            optimizer="AdamW(betas=(0.9, 0.95)), cosine decay to 0.1*lr, grad-norm clip 1.0",
        )


BPE_LLAMA = SubwordRecipe(
    name="bpe-llama",
    vocab_size=2048,
    hf_config=dict(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=32, max_position_embeddings=128, rms_norm_eps=1e-6, rope_theta=10000.0, hidden_act="silu",
        tie_word_embeddings=True,
    ),
    train_chars=1_000_000,
    seq_len=128,
    batch_size=32,
    steps=1500,
    lr=3e-3,
    warmup=100,
    weight_decay=0.01,
    repeat_fraction=0.75,
    seed=0,
    summary=(
        "2-layer Llama-style transformer (RMSNorm, rotary, gated SiLU MLP, 4 query / 2 key-value heads, tied "
        "embeddings) with a 2,048-token byte-level BPE vocabulary, shipped as a Hugging Face directory."
    ),
    training_data=(
        "Rows of 128 tokens, <|bos|> first. 24 of every 32 rows: up to 19 corpus tokens, then a block of 4-59 "
        "token ids drawn uniformly from the 2,046 non-special ids, repeated until the row is full. 8 rows: a "
        "window of BPE-encoded corpus text (lensworks.zoo.corpus(1_000_000), the text the tokenizer was "
        "trained on). Next-token cross-entropy on every position."
    ),
    learned=(
        "A previous-token head in layer 0 and induction heads in layer 1: on a random sequence repeated once "
        "the loss on the second copy falls far below the first (uniform guessing: log 2046 = 7.62 nats), and "
        "find_induction_heads finds them with its default arguments. Text is modelled only roughly (a "
        "quarter of the data); see metrics for the held-out loss per token."
    ),
)

#: Recipes of the Hugging Face demo models, by zoo name.
RECIPES: dict[str, SubwordRecipe] = {BPE_LLAMA.name: BPE_LLAMA}


# --------------------------------------------------------------------------- tokenizer and data


def train_tokenizer(text: str, vocab_size: int):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``text`` that prepends ``<|bos|>``.

    Deterministic: the same text and size give the same merges.

    Example:
        >>> tok = train_tokenizer("def f(x):\\n    return x\\n" * 50, 300)
        >>> tok.encode("def f").ids[0] == tok.token_to_id("<|bos|>")
        True
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if vocab_size < 258:
        raise LensworksError(f"vocab_size must be at least 258 (256 bytes and 2 special tokens), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text[i : i + 10_000] for i in range(0, len(text), 10_000)], trainer=trainer)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                      special_tokens=[(BOS, tok.token_to_id(BOS))]),
    ])
    return tok


def training_batch(
    generator: torch.Generator, text_ids: Int[Tensor, "n"], recipe: SubwordRecipe
) -> Int[Tensor, "batch seq"]:
    """One batch: repeated random blocks (``repeat_fraction`` of the rows) and corpus windows.

    Example:
        >>> ids = torch.arange(2, 1000)
        >>> training_batch(torch.Generator().manual_seed(0), ids, BPE_LLAMA).shape
        torch.Size([32, 128])
    """
    g, T, V = generator, recipe.seq_len, recipe.vocab_size
    n_repeat = round(recipe.batch_size * recipe.repeat_fraction)

    def randint(lo: int, hi: int) -> int:  # lo inclusive, hi exclusive
        return int(torch.randint(lo, hi, (1,), generator=g))

    rows = []
    for b in range(recipe.batch_size):
        if b < n_repeat:
            n = randint(4, 60)
            block = torch.randint(2, V, (n,), generator=g)
            prefix = randint(0, 20)
            start = randint(0, len(text_ids) - prefix)
            body = torch.cat([text_ids[start : start + prefix], block.repeat((T - 1) // n + 1)])[: T - 1]
        else:
            start = randint(0, len(text_ids) - T)
            body = text_ids[start : start + T - 1]
        rows.append(torch.cat([torch.zeros(1, dtype=torch.long), body]))
    return torch.stack(rows)


# --------------------------------------------------------------------------- training


def _build(recipe: SubwordRecipe):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=recipe.vocab_size, bos_token_id=0, eos_token_id=1, **recipe.hf_config)
    config._attn_implementation = "eager"
    with seeded_rng(recipe.seed):
        return LlamaForCausalLM(config)


def _lr_at(recipe: SubwordRecipe, step: int, steps: int) -> float:
    warm = min(1.0, (step + 1) / recipe.warmup)
    return recipe.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / steps))))


def train(
    name: str = "bpe-llama",
    *,
    steps: int | None = None,
    recipe: SubwordRecipe | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    threads: int | None = 1,
) -> tuple[Any, Any, dict[str, Any]]:
    """Train the tokenizer and the model of a Hugging Face demo recipe, deterministically on CPU.

    Global torch RNG state and the thread count are left as they were.

    Args:
        name: The zoo name (``"bpe-llama"``).
        steps: Override the recipe's optimisation steps (the schedule is stretched to fit).
        recipe: Train this variant instead (e.g. ``dataclasses.replace(BPE_LLAMA, vocab_size=400)``).
        progress: Show a tqdm bar (None: only on a terminal).
        log: Called with a line every 250 steps.
        threads: torch CPU threads while training (one thread: identical weights run after run).

    Returns:
        ``(model, tokenizer, info)``: a ``LlamaForCausalLM`` in eval mode, the
        ``tokenizers.Tokenizer``, and a JSON-ready dict (``final_loss``, ``loss_curve``,
        ``hyper_parameters``, ``train_time_s``...).

    Example:
        >>> small = dataclasses.replace(BPE_LLAMA, vocab_size=300, train_chars=50_000, batch_size=4)
        >>> model, tok, info = train(recipe=small, steps=2)
        >>> info["steps"], type(model).__name__
        (2, 'LlamaForCausalLM')
    """
    if name not in RECIPES:
        raise LensworksError(f"unknown Hugging Face zoo recipe {name!r}; the recipes are {list(RECIPES)}")
    recipe = RECIPES[name] if recipe is None else recipe
    return run_with_threads(steps, recipe.steps, threads, lambda n: _train(recipe, n, progress, log))


def _train(recipe: SubwordRecipe, steps: int, progress: bool | None, log: Callable[[str], None] | None):
    from lensworks.zoo._data import corpus

    text = corpus(recipe.train_chars)
    tok = train_tokenizer(text, recipe.vocab_size)
    if tok.get_vocab_size() != recipe.vocab_size:
        raise LensworksError(f"the corpus gave {tok.get_vocab_size()} BPE tokens, fewer than vocab_size={recipe.vocab_size}")
    text_ids = torch.tensor(tok.encode(text, add_special_tokens=False).ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _build(recipe)
    model.train()
    gen = torch.Generator().manual_seed(recipe.seed + 1)

    def loss_of(toks: Tensor) -> Tensor:
        logits = model(input_ids=toks, use_cache=False).logits
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), toks[:, 1:].reshape(-1))

    losses, wall = optimise(
        model, steps=steps, lr=recipe.lr, lr_at=lambda step: _lr_at(recipe, step, steps),
        weight_decay=recipe.weight_decay, betas=(0.9, 0.95), make_batch=lambda: training_batch(gen, text_ids, recipe),
        loss_of=loss_of, desc=f"train {recipe.name}", progress=progress, log=log,
    )
    model.eval()
    info = training_info(recipe.name, recipe, steps, losses, wall)
    return model, tok, info


# --------------------------------------------------------------------------- saving and metrics


def save(model: Any, tokenizer: Any, info: dict[str, Any], out: str | Path) -> Path:
    """Write a Hugging Face directory: weights, config, tokenizer files and ``recipe.json``.

    Files are written into a staging directory beside ``out`` and renamed into place.

    Example:
        >>> small = dataclasses.replace(BPE_LLAMA, vocab_size=300, train_chars=50_000, batch_size=4)
        >>> model, tok, info = train(recipe=small, steps=2)
        >>> out = save(model, tok, info, "out/zoo/bpe-llama")
        >>> sorted(p.name for p in out.iterdir())[:3]
        ['config.json', 'generation_config.json', 'model.safetensors']
    """
    from transformers import PreTrainedTokenizerFast

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".staging.") as staging:
        model.save_pretrained(staging, safe_serialization=True)
        fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, unk_token=None,
                                       model_max_length=model.config.max_position_embeddings,
                                       clean_up_tokenization_spaces=False)
        fast.save_pretrained(staging)
        config_file = Path(staging) / "tokenizer_config.json"
        tc = json.loads(config_file.read_text())
        tc["add_bos_token"] = True  # the post-processor prepends <|bos|>; say so for readers of the config
        tc["tokenizer_class"] = "PreTrainedTokenizerFast"  # a class transformers 4 and 5 both know
        config_file.write_text(json.dumps(tc, indent=2, sort_keys=True) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        for f in Path(staging).iterdir():
            if f.name != "chat_template.jinja":
                os.chmod(f, 0o666 & ~umask)
                os.replace(f, out / f.name)
    write_atomic(out / "recipe.json", json.dumps(info, indent=1))
    return out


def metrics(directory: str | Path, *, train_chars: int) -> dict[str, Any]:
    """What the saved model learned, measured through lensworks on the saved directory.

    Induction and previous-token scores from :func:`lensworks.circuits.head_scores` and the
    heads :func:`lensworks.circuits.find_induction_heads` reports (both with default
    arguments), the loss on each copy of a repeated random sequence, and the held-out text
    loss per token and per character.

    Example:
        >>> # about 5 s on two CPU cores (forward passes over 60,000 held-out characters): not run in the doctests
        >>> metrics(zoo.path("bpe-llama"), train_chars=1_000_000)["induction_heads"]  # doctest: +SKIP
        ['L1H2', 'L1H1', 'L1H0', 'L1H3']
    """
    from lensworks.circuits import find_induction_heads, head_scores, repeated_tokens
    from lensworks.model import encode_text, load_model
    from lensworks.zoo._data import corpus

    model = load_model(directory)
    found = find_induction_heads(model)
    induction = head_scores(model, "induction").scores
    previous = head_scores(model, "previous_token").scores
    n = 50
    toks = repeated_tokens(model, seq_len=n, n_seqs=32, seed=1234)
    with torch.inference_mode():
        logp = model(toks).log_softmax(-1)
    nll = -logp[:, :-1].gather(-1, toks[:, 1:, None])[..., 0]  # nll[:, i] predicts token i + 1
    held_out = corpus(None)[train_chars : train_chars + 60_000]
    ids = encode_text(model, held_out)
    windows = ids[: (len(ids) - 1) // 127 * 127 + 1]
    rows = torch.stack([torch.cat([ids[:1], windows[1 + i : 128 + i]]) for i in range(0, len(windows) - 127, 127)])
    with torch.inference_mode():
        text_loss = model(rows, return_type="loss").item()
    chars_per_token = len(held_out) / (len(ids) - 1)
    return {
        "induction_heads": [HeadId(layer, head).label for layer, head in found.heads],
        "induction_score": [[round(float(x), 4) for x in row] for row in induction],
        "previous_token_score": [[round(float(x), 4) for x in row] for row in previous],
        "loss_first_copy": nll[:, 1:n].mean().item(),
        "loss_second_copy": nll[:, n + 1 : 2 * n].mean().item(),
        "loss_uniform": math.log(model.cfg.d_vocab - 2),
        "heldout_loss_per_token": text_loss,
        "heldout_chars_per_token": chars_per_token,
        "heldout_loss_per_char": text_loss / chars_per_token,
    }


def train_and_save(
    name: str,
    out: str | Path,
    *,
    steps: int | None = None,
    threads: int | None = 1,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Train a Hugging Face demo model, write its directory and measure it (``recipe.json``).

    Example:
        >>> # trains the tokenizer on 1 MB of text and the model for 3,000 steps (an hour on a laptop),
        >>> # so this cannot run in the doctests; train, save and metrics above run its steps quickly
        >>> train_and_save("bpe-llama", "out/zoo/bpe-llama")  # doctest: +SKIP
    """
    model, tok, info = train(name, steps=steps, log=log, threads=threads)
    out = save(model, tok, info, out)
    info["metrics"] = metrics(out, train_chars=RECIPES[name].train_chars)
    write_atomic(out / "recipe.json", json.dumps(info, indent=1))
    return out

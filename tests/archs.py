"""The one architecture list every public analysis is tested on.

Each entry is a tiny model of one family, built the way a user gets it: Hugging Face families are
random checkpoints written to disk by ``transformers`` (tests/hf_families.py) and read back with
``lensworks.load_model``; the attention-only entry is a TransformerLens-native model.

| name       | what it exercises                                                            |
| ---------- | ---------------------------------------------------------------------------- |
| attn-only  | no MLP, no resid_mid, LayerNorm, absolute positions, character vocabulary    |
| ln-mlp     | GPT-2: LayerNorm + MLP, absolute positions, LayerNorm left unfolded          |
| gqa        | Qwen2: grouped-query attention (4 query heads on 2 kv heads), q/k/v biases   |
| llama      | RMSNorm, gated MLP, rotary, GQA                                              |
| neox       | parallel attention/MLP (no resid_mid), partial rotary                        |
| gemma2     | attention and logit soft-caps, local/global attention, pre+post norms        |
| folded-ln  | GPT-2 with LayerNorm folded and weights centred (from_pretrained's default)  |
| bf16       | Llama loaded in bfloat16                                                     |
| char-nl    | nanoGPT char checkpoint (ckpt.pt + meta.pkl): sorted characters, '\\n' is id 0, |
|            | no BOS, no biases, tied head; loaded from nanoGPT's own file layout          |

Under TransformerLens 4 only (its bridge reads them; lensworks registers no spec for them):

| gemma3     | q/k RMSNorms, local/global layers, pre+post norms, scaled embeddings         |
| qwen3      | q/k RMSNorms, grouped-query attention                                        |
| moe        | Mixtral: a sparse mixture of 4 experts (2 per token) in place of the MLP     |
| gptj       | GPT-J: parallel attention + MLP on one LayerNorm, partial interleaved rotary |
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import string

import torch

from foreign import write_nanogpt
from hf_families import FAMILY_CASES, build_hf_checkpoint

from lensworks.model import TL_MAJOR, Model, load_model

#: A character vocabulary with a BOS token (the attention-only entry's).
CHAR_VOCAB = ["<bos>"] + list("abcdefghijklmnopqrstuvwxyz .,\n") + list("0123456789")

#: The char-nl entry's vocabulary as nanoGPT's char prepare.py builds it, ``sorted(set(text))``
#: of printable text: '\n' is id 0, ' ' id 1, and there is no BOS.
NL_CHARS = sorted(set(string.ascii_letters + string.digits + string.punctuation + " \n"))

#: architecture -> (Hugging Face family, load_model keyword arguments); None for native models.
_HF = {
    "ln-mlp": ("gpt2", dict(fold_ln=False, center_writing_weights=False, center_unembed=False)),
    "gqa": ("qwen2", {}),
    "llama": ("llama", {}),
    "neox": ("neox", {}),
    "gemma2": ("gemma2", {}),
    "folded-ln": ("gpt2", {}),
    "bf16": ("llama", dict(dtype=torch.bfloat16)),
    # read by TransformerLens 4's bridge only (no lensworks FamilySpec): on that line's list only
    "gemma3": ("gemma3", {}),
    "qwen3": ("qwen3", {}),
    "moe": ("mixtral", {}),
    "gptj": ("gptj", {}),
}

#: Every entry: the native attention-only model, one line per Hugging Face entry above (adding a
#: family to the list is one line there), and the nanoGPT character checkpoint.
ARCHS: tuple[str, ...] = ("attn-only", *(n for n, (f, _) in _HF.items() if TL_MAJOR >= 4 or not FAMILY_CASES[f].bridge_only),
                          "char-nl")
#: The entries only TransformerLens 4 reads (through its bridge; TransformerLens 3 refuses them).
BRIDGE_ONLY_ARCHS: tuple[str, ...] = tuple(n for n, (f, _) in _HF.items() if FAMILY_CASES[f].bridge_only)

#: (entry, analysis) -> the message of lensworks' refusal: analyses that cannot be defined on a
#: family refuse clearly instead of returning a wrong number. Every other pair must run.
REFUSALS: dict[tuple[str, str], str] = {
    ("moe", "term_importance"): "cannot linearise this MLP",  # a routed mixture of experts is not one MLP
    ("gptj", "term_importance"): "needs to edit attention patterns",  # the bridge's GPT-J attention ...
    ("gptj", "head_pattern"): "needs to edit attention patterns",  # ... fires hook_pattern after using it
}


def refusal(name: str, analysis: str) -> str | None:
    """The message lensworks refuses ``analysis`` on entry ``name`` with, or None when it must run."""
    return REFUSALS.get((name, analysis))


_ROOT = Path(tempfile.mkdtemp(prefix="lensworks-archs-"))
_MODELS: dict[str, Model] = {}


def attn_only_checkpoint(out: Path, *, seed: int = 11, n_layers: int = 2, d_model: int = 32, n_heads: int = 4,
                         d_head: int = 8, n_ctx: int = 64) -> Path:
    """A random attention-only TransformerLens-format ``.pt`` checkpoint (LayerNorm, learned
    positions, character vocabulary), written by hand so it needs neither TransformerLens line."""
    g = torch.Generator().manual_seed(seed)
    V, d, H, dh = len(CHAR_VOCAB), d_model, n_heads, d_head
    rnd = lambda *shape, s=0.3: s * torch.randn(*shape, generator=g)  # noqa: E731
    sd = {"embed.W_E": rnd(V, d, s=1.0), "pos_embed.W_pos": rnd(n_ctx, d), "unembed.W_U": rnd(d, V),
          "unembed.b_U": rnd(V, s=0.1), "ln_final.w": 1 + rnd(d, s=0.1), "ln_final.b": rnd(d, s=0.1)}
    for l in range(n_layers):
        p = f"blocks.{l}."
        sd.update({p + "ln1.w": 1 + rnd(d, s=0.1), p + "ln1.b": rnd(d, s=0.1),
                   p + "attn.W_Q": rnd(H, d, dh), p + "attn.W_K": rnd(H, d, dh), p + "attn.W_V": rnd(H, d, dh),
                   p + "attn.W_O": rnd(H, dh, d), p + "attn.b_Q": rnd(H, dh, s=0.1), p + "attn.b_K": rnd(H, dh, s=0.1),
                   p + "attn.b_V": rnd(H, dh, s=0.1), p + "attn.b_O": rnd(d, s=0.1)})
    cfg = dict(n_layers=n_layers, d_model=d, n_ctx=n_ctx, d_head=dh, n_heads=H, d_vocab=V, act_fn="gelu",
               attn_only=True, normalization_type="LN", positional_embedding_type="standard")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"cfg": cfg, "state_dict": sd, "vocab": CHAR_VOCAB}, out)
    return out


def hf_dir(family: str) -> Path:
    """A tiny random checkpoint of ``family`` on disk (built once per test session)."""
    out = _ROOT / family
    if not (out / "config.json").is_file():
        build_hf_checkpoint(family, out, seed=0)
    return out


def nanogpt_char_checkpoint(root: Path | None = None) -> Path:
    """The char-nl entry's files in nanoGPT's layout: ``out-nl/ckpt.pt`` beside ``data/nl/meta.pkl``."""
    root = _ROOT / "nanogpt" if root is None else root
    ckpt = root / "out-nl" / "ckpt.pt"
    if not ckpt.is_file():
        write_nanogpt(root / "out-nl", chars=NL_CHARS, dataset="nl", bias=False, seed=7)
    return ckpt


def arch_checkpoint(name: str, tmp: Path) -> tuple[Path, list[str]]:
    """A checkpoint of entry ``name`` on disk and the CLI flags that load it as the entry has it."""
    if name == "attn-only":
        return attn_only_checkpoint(tmp / "attn-only.pt"), []
    if name == "char-nl":
        return nanogpt_char_checkpoint(), []
    flags = {"ln-mlp": ["--no-processing"], "bf16": ["--dtype", "bfloat16"]}.get(name, [])
    return hf_dir(_HF[name][0]), flags


def reads_any_text(name: str) -> bool:
    """Whether the entry's tokenizer encodes any printable ASCII text (the attention-only
    entry's lowercase vocabulary does not)."""
    return name != "attn-only"


def arch_model(name: str) -> Model:
    """The model of architecture ``name`` (cached: tests must not modify it)."""
    if name not in _MODELS:
        if name == "attn-only":
            _MODELS[name] = load_model(attn_only_checkpoint(_ROOT / "attn-only.pt"))
        elif name == "char-nl":
            _MODELS[name] = load_model(nanogpt_char_checkpoint())
        else:
            family, kwargs = _HF[name]
            _MODELS[name] = load_model(hf_dir(family), **kwargs)
    return _MODELS[name]


def arch_family(name: str) -> str | None:
    """The Hugging Face family behind an architecture entry (None for native ones)."""
    return _HF[name][0] if name in _HF else None


def float_tol(model: Model, fp32: float) -> float:
    """A tolerance scaled to the model's precision (bf16 carries about 3 significant digits)."""
    return fp32 if model.cfg.dtype in (torch.float32, torch.float64) else max(fp32, 2e-2)

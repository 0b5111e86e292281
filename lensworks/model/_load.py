"""Loading: model objects, local Hugging Face directories, TransformerLens-format checkpoints
(``save_model`` directories, ``.pt`` files, the zoo), other tools' checkpoints and pretrained names.

This module finds out what a source is, reads and checks it the same way on both TransformerLens
lines, and hands the checked config and tensors to :func:`lensworks.model._backend.backend`,
which builds the line's model object. Family knowledge is in :mod:`._families` / :mod:`._specs`,
file reading in :mod:`._files`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor

from lensworks.model import _files, _foreign, _hf, _vocabfile
from lensworks.model._backend import backend
from lensworks.model._compat import check_model, is_model, quiet
from lensworks.model._core import HookedTransformer, LensworksError, Model
from lensworks.model._families import UnsupportedArchitecture
from lensworks.model._placement import Placement, check_placement
from lensworks.model._tlconfig import cfg_from_dict, check_declared_shapes
from lensworks.model._foreign import check_size
from lensworks.model._tokens import BOS_NAMES, vocab_tokenizer
from lensworks.model._vocabfile import VocabSource, read_json, vocab_from_source, vocab_json

ModelSource = Union[Any, str, Path]

_CFG_FILE = "config.json"
_WEIGHTS_FILE = "model.safetensors"
_VOCAB_FILE = "vocab.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_NANOGPT_FILE = "ckpt.pt"


@dataclasses.dataclass(frozen=True)
class _Processing:
    """Weight processing asked for; None means "the source's default"."""

    fold_ln: bool | None
    center_writing_weights: bool | None
    center_unembed: bool | None

    def resolved(self, default: bool) -> dict[str, bool]:
        return {k: default if v is None else bool(v) for k, v in dataclasses.asdict(self).items()}

    @property
    def any_given(self) -> bool:
        return any(v is not None for v in dataclasses.asdict(self).values())


def load_model(
    source: ModelSource,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    fold_ln: bool | None = None,
    center_writing_weights: bool | None = None,
    center_unembed: bool | None = None,
    n_ctx: int | None = None,
    vocab: VocabSource | None = None,
    revision: str | None = None,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, Any] | None = None,
    n_devices: int | None = None,
) -> HookedTransformer:
    """Load a model for analysis, offline unless a pretrained name is asked for.

    Args:
        source: One of
            - a ``HookedTransformer`` (returned as is);
            - a local Hugging Face checkpoint directory (``config.json`` with ``architectures``,
              ``*.safetensors`` or ``pytorch_model*.bin`` weights, one file or several shards,
              and ``tokenizer.json`` / ``tokenizer_config.json`` when present) of the GPT-2,
              GPT-NeoX (Pythia), Llama, Mistral, Gemma, Gemma-2 or Qwen2 family;
            - a directory written by :func:`save_model` (TransformerLens config and weights);
            - a ``.pt``/``.pth`` file holding ``{"cfg": {...}, "state_dict": {...},
              "vocab": [...]}`` (``vocab`` optional), read with ``weights_only=True``;
            - a nanoGPT ``ckpt.pt`` (or the ``out`` directory holding it), its vocabulary read
              from the ``meta.pkl`` beside it or in ``../data/<dataset>/`` (plain data only,
              never code), else GPT-2's BPE from local tokenizer files when ``vocab_size`` is
              50257 or 50304;
            - a "Let's build GPT" state dict (``torch.save(model.state_dict(), path)``), with
              ``vocab=`` since that layout stores none;
            - a TransformerLens pretrained name such as ``"gpt2"`` (needs a network).
        device: Where to put the weights (default CPU for local checkpoints).
        dtype: Floating dtype (default float32; float16 TransformerLens checkpoints are upcast).
        fold_ln: Fold LayerNorm/RMSNorm weights into the next matrices, as in
            ``HookedTransformer.from_pretrained``. Default: True for Hugging Face directories and
            pretrained names; TransformerLens-format checkpoints load as stored unless a flag is
            passed.
        center_writing_weights: Centre every matrix that writes to the residual stream
            (LayerNorm models only; a no-op for RMSNorm). Defaults as ``fold_ln``.
        center_unembed: Centre ``W_U`` over the vocabulary (skipped under a logit soft-cap,
            which is not shift-invariant). Defaults as ``fold_ln``.
        n_ctx: Context length for Hugging Face directories (default the checkpoint's, at most
            4096, since TransformerLens 3.x allocates an ``n_ctx x n_ctx`` mask per layer).
        vocab: The vocabulary, for checkpoints that store none or to override the stored one:
            token strings in id order (``sorted(set(text))`` for a character model), a
            training corpus (its sorted distinct characters), a nanoGPT ``meta.pkl``, a
            ``vocab.json``, or a directory of Hugging Face tokenizer files.
        revision: Which of several checkpoints in the directory ``source`` to load: the
            subfolder of that name (``load_model("pythia-70m", revision="step1000")`` loads
            ``pythia-70m/step1000``), or, in a Hugging Face cache folder
            (``models--org--name``), the snapshot that ``refs/<revision>`` points to. Anything
            else is refused with the revisions the directory holds.
        device_map: Split a model too big for one device by layers (TransformerLens 4, Hugging
            Face directories and pretrained names): ``"auto"``, ``"balanced"``,
            ``"balanced_low_0"``, ``"sequential"`` or a dict of module name -> device, passed to
            ``TransformerBridge.boot_transformers`` (Hugging Face's dispatcher places the layers).
            Not together with ``device``.
        max_memory: Device -> memory budget for ``device_map``'s strategies
            (``{0: "70GiB", 1: "70GiB", "cpu": "200GiB"}``).
        n_devices: Split over this many CUDA devices: TransformerLens 3's ``n_devices`` (its
            blocks spread evenly), or under TransformerLens 4 the bridge's own translation into a
            device map. See docs/distributed.md for which mode fits which model size.

    Returns:
        The model, in eval mode, with a tokenizer when the checkpoint has one (a Hugging Face
        tokenizer, or one over exactly the stored vocabulary): a ``HookedTransformer`` under
        TransformerLens 3.x, a ``TransformerBridge`` in compatibility mode under 4.x.

    Example:
        >>> from lensworks import zoo
        >>> from lensworks.model import processing_state
        >>> llama = load_model(zoo.path("bpe-llama"))  # a Hugging Face LlamaForCausalLM directory
        >>> processing_state(llama)["fold_ln"], processing_state(llama)["architecture"]
        (True, 'LlamaForCausalLM')
        >>> load_model(zoo.path("char-mlp")).cfg.d_vocab  # a directory written by save_model
        97

        The next three need files or a network this example does not have:

        >>> shakespeare = load_model("nanoGPT/out-shakespeare-char/ckpt.pt")  # doctest: +SKIP
        >>> lbg = load_model("gpt_state.pt", vocab="input.txt")  # doctest: +SKIP
        >>> gpt2 = load_model("gpt2")  # downloads from the Hugging Face hub  # doctest: +SKIP
    """
    flags = _Processing(fold_ln, center_writing_weights, center_unembed)
    if is_model(source):
        if (flags.any_given or dtype is not None or device is not None or vocab is not None or revision is not None
                or device_map is not None or max_memory is not None or n_devices is not None):
            raise LensworksError(
                "load_model got a model object together with processing, dtype, device, vocab or revision options; "
                "it returns model objects as they are (process or move the model yourself)"
            )
        check_model(source)
        return source
    if not isinstance(source, (str, Path)):
        raise LensworksError(
            "load_model expects a HookedTransformer or TransformerBridge, a checkpoint path or a pretrained name, "
            f"got {type(source).__name__}"
        )
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise LensworksError(f"dtype must be a floating torch.dtype such as torch.bfloat16, got {dtype!r}")
    _check_device(device)
    placement = check_placement(device, device_map, max_memory, n_devices, line=backend().line)
    path = Path(source).expanduser()
    if isinstance(source, str) and not path.exists():
        from lensworks._zoo_index import zoo_checkpoint

        path = zoo_checkpoint(source) or path  # a bundled demo model by name
    if revision is not None:
        path = resolve_revision(path, revision)
    if n_ctx is not None:
        n_ctx = check_size(n_ctx, "n_ctx", "load_model")
    user_vocab = vocab_from_source(vocab, where="vocab") if vocab is not None else None
    if placement.split and path.exists() and not (path.is_dir() and _hf.is_hf_dir(path)):
        raise LensworksError(f"{path}: device_map / max_memory / n_devices split Hugging Face checkpoint directories "
                             "and pretrained names; this is a TransformerLens-format or nanoGPT checkpoint (load it on "
                             "one device with device=, or save it as a Hugging Face directory)")
    if path.is_dir():
        if _hf.is_hf_dir(path):
            if user_vocab is not None:
                raise LensworksError(f"{path}: a Hugging Face directory carries its own tokenizer; vocab= is for "
                                     "checkpoints that store none")
            return _zoo_named(_load_hf_dir(path, device=device, dtype=dtype, flags=flags, n_ctx=n_ctx,
                                           placement=placement), path)
        if not (path / _CFG_FILE).exists() and (path / _NANOGPT_FILE).is_file():
            path = path / _NANOGPT_FILE  # nanoGPT's out_dir
        else:
            return _zoo_named(_load_tl_dir(path, device=device, dtype=dtype, flags=flags, vocab=user_vocab), path)
    if path.is_file():
        return _load_file(path, device=device, dtype=dtype, flags=flags, vocab=user_vocab)
    text = str(source)
    looks_like_path = path.suffix in (".pt", ".pth", ".safetensors", ".json", ".bin") or text.startswith((".", "/", "~"))
    if looks_like_path or (path.parent != Path(".") and path.parent.exists()):
        raise LensworksError(
            f"no checkpoint at {text!r}: expected a Hugging Face or save_model directory, or a .pt/.pth file"
        )
    return _load_pretrained(text, device=device, dtype=dtype, flags=flags, placement=placement)


# --------------------------------------------------------------------------- revisions


def _holds_checkpoint(path: Path) -> bool:
    return path.is_dir() and ((path / _CFG_FILE).is_file() or (path / _NANOGPT_FILE).is_file())


def _natural(name: str) -> list[Any]:
    """Sort key that puts step2000 before step10000."""
    import re

    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def revisions(path: Path) -> list[str]:
    """The checkpoints directory ``path`` holds, by the name ``revision=`` takes: its subfolders
    holding a checkpoint (``config.json`` or ``ckpt.pt``) and, in a Hugging Face cache folder,
    the names under ``refs/``; in natural order.

    Example:
        >>> revisions(zoo.path("bpe-llama").parent)
        ['bpe-llama', 'char-mlp', 'induction-2l']
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        return []
    found = {p.name for p in path.iterdir() if _holds_checkpoint(p)}
    refs = path / "refs"
    if refs.is_dir() and (path / "snapshots").is_dir():
        found |= {p.relative_to(refs).as_posix() for p in refs.rglob("*") if p.is_file()}
    return sorted(found, key=_natural)


def resolve_revision(path: Path, revision: str) -> Path:
    """The folder of checkpoint ``revision`` inside directory ``path``: ``path/revision`` when it
    holds a checkpoint, else (a Hugging Face cache folder ``models--org--name``) the snapshot that
    ``refs/revision`` names, or ``snapshots/revision`` (a commit hash).

    Example:
        >>> resolve_revision(zoo.path("char-mlp").parent, "char-mlp").name
        'char-mlp'
        >>> resolve_revision(zoo.path("char-mlp").parent, "step1")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        lensworks.errors.LensworksError: revision 'step1': .../checkpoints holds no checkpoint of that name; its revisions: ['bpe-llama', 'char-mlp', 'induction-2l']
    """
    if not isinstance(revision, str) or not revision.strip():
        raise LensworksError(f"revision must be a non-empty string naming a checkpoint folder, got {revision!r}")
    path = Path(path).expanduser()
    if not path.is_dir():
        raise LensworksError(f"revision {revision!r}: {path} is not a local directory; revision= picks one of several "
                             "checkpoints inside a directory (for a hub model's training checkpoints, download one with "
                             "huggingface_hub.snapshot_download(repo, revision=...) and pass its folder)")
    parts = Path(revision).parts
    if Path(revision).is_absolute() or ".." in parts:
        raise LensworksError(f"revision {revision!r}: expected the name of a folder inside {path}, not a path out of it")
    candidates = [path / revision]
    ref = path / "refs" / revision
    if ref.is_file():
        try:
            commit = ref.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise LensworksError(f"revision {revision!r}: {ref} could not be read ({exc})") from exc
        if commit and "/" not in commit and commit not in (".", ".."):
            candidates.append(path / "snapshots" / commit)
    candidates.append(path / "snapshots" / revision)
    for c in candidates:
        if _holds_checkpoint(c):
            return c
    known = revisions(path)
    shown = known[:20] + (["..."] if len(known) > 20 else [])
    raise LensworksError(f"revision {revision!r}: {path} holds no checkpoint of that name; "
                         + (f"its revisions: {shown}" if known else "it has no subfolder holding a checkpoint "
                            "(config.json or ckpt.pt)"))


# --------------------------------------------------------------------------- Hugging Face


def _load_hf_dir(path: Path, *, device: Any, dtype: Any, flags: _Processing, n_ctx: int | None,
                 placement: Placement = Placement()) -> Model:
    where = str(path)
    try:
        spec, raw = _hf.read_config(path)
    except UnsupportedArchitecture as exc:
        if not backend().reads_unregistered:
            raise UnsupportedArchitecture(f"{exc} (under TransformerLens 3; under TransformerLens 4 lensworks reads "
                                          "any architecture its TransformerBridge boots)") from None
        spec, raw = None, read_json(path / _CFG_FILE, "config")
    if spec is None:
        fields = _unregistered_fields(path, raw, n_ctx=n_ctx)
    else:
        fields = _hf.config_fields(spec, raw, where=f"{path / _CFG_FILE}", n_ctx=n_ctx)
    tokenizer = _hf_tokenizer(path) if any((path / f).is_file() for f in _TOKENIZER_FILES) else None
    if tokenizer is not None:
        top = max(tokenizer.get_vocab().values(), default=-1)
        if top >= fields["d_vocab"]:
            raise LensworksError(
                f"{where}: the tokenizer has ids up to {top} but the embedding (config.json vocab_size) has only "
                f"{fields['d_vocab']} rows"
            )
    return backend().build_from_hf(path, spec, raw, fields, tokenizer=tokenizer, dtype=dtype or torch.float32,
                                   device=device, processing=flags.resolved(True), placement=placement)


def _unregistered_fields(path: Path, raw: dict[str, Any], *, n_ctx: int | None) -> dict[str, Any]:
    """The sizes lensworks checks before handing an unregistered architecture to the bridge:
    the layer count (against the blocks the weight files hold), the vocabulary and the context."""
    from lensworks.model._specs import config_size

    where = f"{path / _CFG_FILE}"
    n_layers = config_size(raw, "num_hidden_layers", "n_layer", "num_layers", "n_layers", where=where)
    stored = _files.stored_shapes(path)
    if any(_hf._LAYER_KEY.search(k) for k in stored):  # a layout of "h.N." / "layers.N." blocks
        _hf.check_layer_count(stored, n_layers, where)
    ctx = n_ctx if n_ctx is not None else min(
        config_size(raw, "max_position_embeddings", "n_positions", "n_ctx", "seq_length", where=where),
        _hf.MAX_DEFAULT_N_CTX)
    return {"n_layers": n_layers, "d_vocab": config_size(raw, "vocab_size", where=where), "n_ctx": int(ctx)}


def _hf_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        with quiet():
            return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise LensworksError(f"{path}: the tokenizer files could not be read ({type(exc).__name__}: {str(exc)[:200]})") from exc


# --------------------------------------------------------------------------- TransformerLens format


def _build(
    raw_cfg: dict[str, Any],
    state_dict: dict[str, Tensor],
    vocab: Any,
    *,
    device: Any,
    dtype: Any,
    flags: _Processing,
    where: str,
    tokenizer_dir: Path | None = None,
    process_default: bool = False,
) -> Any:
    """A model from a TransformerLens-format config and state dict. ``vocab`` is token strings,
    a Hugging Face tokenizer, or None; ``process_default`` is whether weights are processed
    (fold_ln, centring) when no flag is passed: False for TransformerLens-format checkpoints,
    which load as stored, True for other tools' raw checkpoints, as for Hugging Face ones."""
    check_declared_shapes(raw_cfg, state_dict, where=where)
    _files.check_floating(state_dict, where)
    stored = raw_cfg.get("dtype", torch.float32)
    target = dtype or (stored if stored != torch.float16 else torch.float32)
    raw_cfg = {**raw_cfg, "dtype": target}
    tokenizer = None
    if isinstance(vocab, (list, tuple)):
        vocab = list(vocab)
        if len(vocab) != raw_cfg.get("d_vocab"):
            raise LensworksError(f"{where}: the vocabulary has {len(vocab)} entries but the model's embedding has "
                                 f"d_vocab={raw_cfg.get('d_vocab')} rows")
        raw_cfg["default_prepend_bos"] = any(b in vocab for b in BOS_NAMES)
        tokenizer = vocab_tokenizer(vocab)
    elif vocab is not None:
        tokenizer = vocab
    elif tokenizer_dir:
        tokenizer = _hf_tokenizer(tokenizer_dir)
    if tokenizer is not None and not isinstance(vocab, list):
        top = max(tokenizer.get_vocab().values(), default=-1)
        if top >= raw_cfg["d_vocab"]:
            raise LensworksError(f"{where}: the tokenizer has ids up to {top} but the embedding has only "
                                 f"{raw_cfg['d_vocab']} rows")
    process = flags.any_given or process_default
    resolved = flags.resolved(process_default)
    sd = {k: v.to(target) if v.is_floating_point() else v for k, v in state_dict.items()}
    return backend().build_from_tl(raw_cfg, sd, tokenizer=tokenizer, dtype=target, device=device, processing=resolved,
                                   process=process, where=where)


def _zoo_named(model: Any, path: Path) -> Any:
    """A bundled demo model keeps its zoo name as ``cfg.model_name`` (the report's model card and
    its choice of text read it); any other checkpoint is left as loaded."""
    from lensworks._zoo_index import ZOO_CHECKPOINTS

    try:
        if path.resolve().parent == ZOO_CHECKPOINTS.resolve():
            model.cfg.model_name = path.name
    except (OSError, AttributeError):  # pragma: no cover - an unusual filesystem or config
        pass
    return model


def _check_device(device: Any) -> None:
    """Refuse a malformed or absent device before any weights are read."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise LensworksError(f"device {device!r} is not a torch device; expected e.g. 'cpu', 'cuda', 'cuda:1' or 'mps'") from exc
    if dev.type == "meta":
        raise LensworksError(f"device {device!r} holds no data (a meta tensor has shapes only), so nothing could be "
                             "computed; use 'cpu' or a GPU")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise LensworksError(f"device {device!r}: CUDA is not available here (torch {torch.__version__}, "
                                 f"built {'with' if torch.version.cuda else 'without'} CUDA); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise LensworksError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise LensworksError(f"device {device!r}: MPS is not available on this machine; use --device cpu")


def _load_pretrained(name: str, *, device: Any, dtype: Any, flags: _Processing,
                     placement: Placement = Placement()) -> Model:
    return backend().pretrained(name, dtype=dtype, device=device, processing=flags.resolved(True), placement=placement)


def _load_tl_dir(path: Path, *, device: Any, dtype: Any, flags: _Processing, vocab: Any = None) -> Model:
    cfg_path, w_path = path / _CFG_FILE, path / _WEIGHTS_FILE
    if not cfg_path.exists() or not w_path.exists():
        raise LensworksError(
            f"{path}: expected a Hugging Face checkpoint, a directory written by lensworks.save_model "
            f"({_CFG_FILE} and {_WEIGHTS_FILE}) or a nanoGPT out directory ({_NANOGPT_FILE}); "
            f"found {sorted(p.name for p in path.iterdir())[:10]}"
        )
    cfg = cfg_from_dict(read_json(cfg_path, "config"), where=str(cfg_path))
    state_dict = _files.read_safetensors(w_path)
    tok_dir = path if vocab is None and any((path / f).is_file() for f in _TOKENIZER_FILES) else None
    if vocab is None and tok_dir is None and (path / _VOCAB_FILE).is_file():
        vocab = vocab_json(path / _VOCAB_FILE)
    return _build(cfg, state_dict, vocab, device=device, dtype=dtype, flags=flags, where=str(path), tokenizer_dir=tok_dir)


def _load_file(path: Path, *, device: Any, dtype: Any, flags: _Processing, vocab: Any = None) -> Model:
    if path.suffix not in (".pt", ".pth", ".ckpt"):
        raise LensworksError(
            f"{path}: expected a .pt/.pth checkpoint file or a checkpoint directory, got a {path.suffix or 'suffix-less'} file"
        )
    obj = _files.torch_load(path, mmap=True)
    layout = _foreign.layout_of(obj)
    where = str(path)
    if layout == "nanogpt":
        cfg, sd, run = _foreign.nanogpt_checkpoint(obj, where=where)
        del obj  # the optimizer state is never read (mapped, not loaded)
        if vocab is None:
            vocab = _vocabfile.nanogpt_vocab(path, run, cfg["d_vocab"])
        return _build(cfg, sd, vocab, device=device, dtype=dtype, flags=flags, where=where, process_default=True)
    if layout == "lbg":
        cfg, sd = _foreign.lbg_state_dict(obj, where=where)
        if vocab is None:
            _vocabfile.warn_no_vocab(path, "a \"Let's build GPT\" state dict stores no vocabulary")
        return _build(cfg, sd, vocab, device=device, dtype=dtype, flags=flags, where=where, process_default=True)
    if layout == "nanogpt-bare":
        raise LensworksError(f"{path}: a bare nanoGPT state dict holds no model_args (n_head cannot be read from "
                             "the shapes); load the ckpt.pt that train.py writes, which has them")
    if not isinstance(obj, dict) or "cfg" not in obj or "state_dict" not in obj:
        keys = sorted(map(str, obj))[:10] if isinstance(obj, dict) else type(obj).__name__
        raise LensworksError(f"{path}: expected a lensworks/TransformerLens checkpoint (a dict with 'cfg', 'state_dict' "
                             f"and optional 'vocab'), a nanoGPT ckpt.pt or a \"Let's build GPT\" state dict; got {keys}")
    sd = obj["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise LensworksError(f"{path}: 'state_dict' must map parameter names to tensors")
    stored = obj.get("vocab")
    if stored is not None and not (isinstance(stored, (list, tuple)) and all(isinstance(s, str) for s in stored)):
        raise LensworksError(f"{path}: 'vocab' must be a list of token strings")
    cfg = cfg_from_dict(obj["cfg"], where=where)
    return _build(cfg, sd, vocab if vocab is not None else stored, device=device, dtype=dtype, flags=flags, where=where)

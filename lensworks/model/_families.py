"""Hugging Face families: one :class:`FamilySpec` per ``architectures[0]`` in a registry.

Everything lensworks knows about a family of ``*ForCausalLM`` checkpoints is in its spec: where
its weights live (base-model prefix, output head, embedding), whether the head is tied by default,
how ``config.json`` maps to TransformerLens config fields, which converter turns its tensors into
a TransformerLens state dict, and whether its strings get a BOS token by default. The loaders
(:mod:`._hf`, :mod:`._load`) only look specs up; they never branch on a family's name. The
built-in families are registered in :mod:`._specs`, the way TransformerLens 4 registers its
architecture adapters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any, Callable

from lensworks.model._core import LensworksError

__all__ = ["FamilySpec", "register_family", "family_for", "families", "SUPPORTED_ARCHITECTURES"]

#: ``config_fields(raw, where)``: HookedTransformerConfig fields from a parsed config.json.
ConfigMapping = Callable[[dict[str, Any], str], dict[str, Any]]
#: ``converter(weights, cfg)``: TransformerLens state dict from an attribute view of the tensors.
Converter = Callable[[Any, Any], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class FamilySpec:
    """What lensworks needs to read one Hugging Face family's checkpoints.

    Attributes:
        architecture: ``architectures[0]`` in config.json, e.g. ``"LlamaForCausalLM"``.
        family: Short name used in docs and errors, e.g. ``"llama"``.
        config: Maps the parsed config.json (and the file's name, for messages) to
            HookedTransformerConfig fields; the loader adds ``d_vocab``, ``original_architecture``,
            the BOS default and the context cap, and checks every size.
        converter: TransformerLens's converter for the family (see :func:`tl_converter`), called
            on an attribute view of the tensors and the HookedTransformerConfig.
        base_prefix: Prefix of every weight of the ``*ForCausalLM`` model but the head; added to
            the keys of a checkpoint saved from the bare base model.
        head: Name of the output head's weight.
        embedding: Name of the token embedding the head may be tied to.
        tied_by_default: Whether the head is the embedding when config.json has no
            ``tie_word_embeddings``.
        default_prepend_bos: Whether strings get a BOS token by default (False for families
            trained without one, such as GPT-NeoX/Pythia and Qwen2).

    Example:
        >>> spec = family_for("LlamaForCausalLM")
        >>> spec.family, spec.head, spec.tied_by_default
        ('llama', 'lm_head.weight', False)
    """

    architecture: str
    family: str
    config: ConfigMapping
    converter: Converter
    base_prefix: str = "model."
    head: str = "lm_head.weight"
    embedding: str = "model.embed_tokens.weight"
    tied_by_default: bool = False
    default_prepend_bos: bool = True

    @property
    def head_module(self) -> str:
        """The head's module prefix (``"lm_head."``), which carries no base prefix.

        Example:
            >>> family_for("GPTNeoXForCausalLM").head_module
            'embed_out.'
        """
        return self.head.rsplit(".", 1)[0] + "."

    def with_base_prefix(self, names: Mapping[str, Any]) -> dict[str, Any]:
        """``names`` with the base prefix added when none of them has it (a checkpoint saved from
        the bare base model rather than ``*ForCausalLM``); the head's keys are left as they are.

        Example:
            >>> family_for("GPT2LMHeadModel").with_base_prefix({"wte.weight": 1, "lm_head.weight": 2})
            {'transformer.wte.weight': 1, 'lm_head.weight': 2}
        """
        if any(k.startswith(self.base_prefix) for k in names):
            return dict(names)
        return {k if k.startswith(self.head_module) else self.base_prefix + k: v for k, v in names.items()}

    def is_tied(self, raw: Mapping[str, Any]) -> bool:
        """Whether config.json ``raw`` ties the output head to the embedding.

        Example:
            >>> family_for("Gemma2ForCausalLM").is_tied({}), family_for("LlamaForCausalLM").is_tied({})
            (True, False)
        """
        return bool(raw.get("tie_word_embeddings", self.tied_by_default))


def tl_converter(name: str) -> Converter:
    """A converter from ``transformer_lens.pretrained.weight_conversions``, imported on first use.

    Example:
        >>> convert = tl_converter("convert_llama_weights")  # nothing imported yet
    """

    def convert(weights: Any, cfg: Any) -> dict[str, Any]:
        from transformer_lens.pretrained import weight_conversions

        return getattr(weight_conversions, name)(weights, cfg)

    convert.__name__ = convert.__qualname__ = name
    return convert


_REGISTRY: dict[str, FamilySpec] = {}


def register_family(spec: FamilySpec, *, replace: bool = False) -> FamilySpec:
    """Add ``spec`` to the families :func:`lensworks.load_model` reads.

    Args:
        spec: The family's spec.
        replace: Allow replacing the spec already registered for its architecture.

    Returns:
        ``spec``.

    Example:
        >>> register_family(dataclasses.replace(family_for("LlamaForCausalLM"), architecture="MyLlamaForCausalLM",
        ...                                     family="my-llama"))  # doctest: +ELLIPSIS
        FamilySpec(architecture='MyLlamaForCausalLM', family='my-llama', ...)
        >>> _ = _REGISTRY.pop("MyLlamaForCausalLM")
    """
    if not isinstance(spec, FamilySpec):
        raise LensworksError(f"register_family expects a FamilySpec, got {type(spec).__name__}")
    old = _REGISTRY.get(spec.architecture)
    if old is not None and not replace:
        raise LensworksError(f"architecture {spec.architecture!r} is already registered (family {old.family!r}); "
                             "pass replace=True to replace it")
    clash = [s.architecture for s in _REGISTRY.values() if s.family == spec.family and s.architecture != spec.architecture]
    if clash:
        raise LensworksError(f"family name {spec.family!r} is already used by {clash[0]}; expected a new name")
    _REGISTRY[spec.architecture] = spec
    return spec


def families() -> tuple[FamilySpec, ...]:
    """Every registered family, in registration order.

    Example:
        >>> [s.family for s in families()][:3]
        ['gpt2', 'neox', 'llama']
    """
    return tuple(_REGISTRY.values())


def supported_text() -> str:
    """The registered architectures with their family names, for messages.

    Example:
        >>> supported_text().split(", ")[0]
        'GPT2LMHeadModel (gpt2)'
    """
    return ", ".join(f"{s.architecture} ({s.family})" for s in _REGISTRY.values())


class UnsupportedArchitecture(LensworksError):
    """A config.json whose architecture no registered :class:`FamilySpec` reads. Under
    TransformerLens 4 the loader then hands the directory to the bridge, which reads many more."""


def family_for(architecture: str | None, *, where: str = "config.json", model_type: Any = None) -> FamilySpec:
    """The spec of ``architecture`` (``architectures[0]`` in config.json), or an error naming
    what came and every architecture lensworks reads.

    Args:
        architecture: The architecture name, or None when config.json has none.
        where: The file, for the message.
        model_type: config.json's ``model_type``, named in the message when there is no architecture.

    Example:
        >>> family_for("Qwen2ForCausalLM").default_prepend_bos
        False
    """
    spec = _REGISTRY.get(architecture) if isinstance(architecture, str) else None
    if spec is None:
        got = architecture if architecture else f"no 'architectures' entry (model_type {model_type!r})"
        raise UnsupportedArchitecture(f"{where}: unsupported architecture {got}; lensworks reads {supported_text()}")
    return spec


class _ArchitectureNames(Mapping[str, str]):
    """``architecture -> family`` over the registry, live (a family registered later shows up)."""

    def __getitem__(self, architecture: str) -> str:
        return _REGISTRY[architecture].family

    def __iter__(self) -> Iterator[str]:
        return iter(list(_REGISTRY))

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __repr__(self) -> str:
        return repr({a: s.family for a, s in _REGISTRY.items()})


#: ``architectures[0]`` in config.json -> family name, derived from the registry.
SUPPORTED_ARCHITECTURES: Mapping[str, str] = _ArchitectureNames()

# The built-in families register themselves in lensworks.model._specs, which lensworks.model imports.

"""Shared types: what sae-ts needs of an SAE and of a hook, and the literal option sets."""

from __future__ import annotations

from typing import Any, Literal, Protocol, TypeAlias, runtime_checkable

import torch

__all__ = ["HookFn", "LanguageModel", "Method", "Positions", "SAELike", "ScaleMode"]

Positions: TypeAlias = Literal["all", "from_prompt_end"] | int
"""Where a steering vector is added: every position, from the last prompt token, or ``>= k``."""

Method: TypeAlias = Literal["sae_ts", "pinv", "targeted"]
"""Solver methods (see :mod:`sae_ts.solver`)."""

ScaleMode: TypeAlias = Literal["fixed", "calibrated"]


@runtime_checkable
class SAELike(Protocol):
    """What sae-ts uses of an SAE: a sae-lens ``SAE`` satisfies it.

    ``cfg`` has ``d_in``, ``d_sae`` and ``metadata`` (with ``hook_name`` and, for sae-ts's own
    SAEs, ``sink_ratio`` and ``sink_reference_norm``).
    """

    cfg: Any
    W_enc: torch.Tensor
    W_dec: torch.Tensor

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor: ...


class LanguageModel(Protocol):
    """What sae-ts uses of a model: TransformerLens's ``HookedTransformer`` and
    ``TransformerBridge`` both satisfy it (see :mod:`sae_ts.backends`).

    ``cfg`` has ``d_model``, ``n_layers``, ``device``, ``dtype`` and ``model_name``; ``hook_dict``
    maps hook names (``blocks.L.hook_resid_post``, ...) to hook points; ``tokenizer`` is a Hugging
    Face tokenizer whose BOS is the document-start token sae-ts prepends.
    """

    @property
    def cfg(self) -> Any: ...

    @property
    def tokenizer(self) -> Any: ...

    @property
    def hook_dict(self) -> Any: ...

    @property
    def ln_final(self) -> Any: ...

    @property
    def unembed(self) -> Any: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def to_tokens(self, *args: Any, **kwargs: Any) -> Any: ...

    def to_string(self, *args: Any, **kwargs: Any) -> Any: ...

    def run_with_cache(self, *args: Any, **kwargs: Any) -> Any: ...

    def run_with_hooks(self, *args: Any, **kwargs: Any) -> Any: ...


class HookFn(Protocol):
    """A TransformerLens forward hook: ``fn(activation, hook=HookPoint) -> Tensor | None``."""

    def __call__(self, act: torch.Tensor, hook: Any) -> torch.Tensor | None: ...

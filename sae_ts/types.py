"""Shared types: what sae-ts needs of an SAE and of a hook, and the literal option sets."""

from __future__ import annotations

from typing import Any, Literal, Protocol, TypeAlias, runtime_checkable

import torch

__all__ = ["HookFn", "Method", "Positions", "SAELike", "ScaleMode"]

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


class HookFn(Protocol):
    """A TransformerLens forward hook: ``fn(activation, hook=HookPoint) -> Tensor | None``."""

    def __call__(self, act: torch.Tensor, hook: Any) -> torch.Tensor | None: ...

"""Steering hooks: add vectors to the residual stream (generation is in :mod:`sae_ts.generation`).

:func:`steer` is a context manager that adds one vector to every batch row, or one vector per row
(a ``[batch, d_model]`` tensor, each with its own scale), at one hook point. It removes exactly the
hook it added when the block exits, also when the block raises.

Positions (``positions=``):

* ``"all"`` (default): every position, BOS and prompt included, as in the SAE-TS paper.
* ``"from_prompt_end"``: the last prompt token and every generated token (Tan et al.).
* an ``int`` k: absolute positions ``>= k``.

Position bookkeeping works with and without TransformerLens's KV cache: a forward call over more
than one position starts a new sequence at position 0, a one-position call continues the previous
one (KV-cached generation), and the prompt length is the length of the first call after the
context is entered (or :meth:`SteeringHook.reset` is called). Use one ``steer`` block per
generation, or call ``reset()`` between them, when positions are not ``"all"``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from transformer_lens.hook_points import HookPoint

from .artifacts import load_artifact, save_artifact
from .errors import ArtifactError, ConfigError, InputTypeError, UnknownHookError
from .types import HookFn, LanguageModel, Positions

__all__ = [
    "SteeringHook",
    "SteeringVector",
    "add_hooks",
    "check_vector",
    "steer",
]


def check_vector(vector: torch.Tensor, d_model: int, name: str = "vector") -> torch.Tensor:
    """Validate a steering vector (``[d_model]`` or ``[batch, d_model]``): shape, dtype, finite."""
    if not isinstance(vector, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor, got {type(vector).__name__}")
    if not vector.is_floating_point():
        raise InputTypeError(f"{name} must be a floating-point tensor, got {vector.dtype}")
    if vector.ndim not in (1, 2) or vector.shape[-1] != d_model:
        raise ConfigError(
            f"{name} must have shape [d_model] or [batch, d_model] with d_model={d_model}, "
            f"got {tuple(vector.shape)}"
        )
    if not torch.isfinite(vector).all():
        raise ConfigError(f"{name} contains NaN or inf")
    return vector


def _hook_point(model: LanguageModel, hook_name: str) -> HookPoint:
    if hook_name not in model.hook_dict:
        close = [h for h in model.hook_dict if h.split(".")[-1] == hook_name.split(".")[-1]][:5]
        raise UnknownHookError(f"hook {hook_name!r} is not in the model; e.g. {close}")
    return model.hook_dict[hook_name]


@contextmanager
def add_hooks(model: LanguageModel, fwd_hooks: Sequence[tuple[str, HookFn]]) -> Iterator[None]:
    """Add forward hooks for the duration of the block; remove exactly these, even on error.

    Unlike ``model.hooks()``, hooks that were already on the model stay.
    """
    added: list[tuple[HookPoint, HookFn]] = []
    try:
        for name, fn in fwd_hooks:
            hp = _hook_point(model, name)
            hp.add_hook(cast(Any, fn), dir="fwd")  # TL names the tensor argument; ours need not
            added.append((hp, fn))
        yield
    finally:
        for hp, fn in reversed(added):
            for handle in [h for h in hp.fwd_hooks if h.user_hook is fn]:
                handle.hook.remove()
                hp.fwd_hooks.remove(handle)


class SteeringHook:
    """A TransformerLens hook that adds ``scale * vector`` to the activations it sees."""

    def __init__(
        self,
        vectors: torch.Tensor,
        scales: float | torch.Tensor = 1.0,
        positions: Positions = "all",
    ) -> None:
        self.vectors = vectors
        scales_t = torch.as_tensor(scales, dtype=torch.float32)
        if scales_t.ndim > 1 or (scales_t.ndim == 1 and vectors.ndim == 1):
            raise ConfigError("per-row scales need per-row vectors ([batch, d_model])")
        if scales_t.ndim == 1 and scales_t.shape[0] != vectors.shape[0]:
            raise ConfigError(f"{scales_t.shape[0]} scales for {vectors.shape[0]} vectors")
        if not torch.isfinite(scales_t).all():
            raise ConfigError("scales contain NaN or inf")
        if not (positions in ("all", "from_prompt_end") or isinstance(positions, int)):
            raise ConfigError(
                f"positions must be 'all', 'from_prompt_end' or an int, got {positions!r}"
            )
        self.scales = scales_t
        self.positions = positions
        self.reset()

    def reset(self) -> None:
        """Forget position bookkeeping: the next call starts a new prompt."""
        self._next_offset: int | None = None
        self._prompt_len: int | None = None

    def delta(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        """The added vector(s) as ``[batch or 1, d_model]`` in ``like``'s dtype and device."""
        vec = self.vectors.to(device=like.device, dtype=torch.float32)
        scales = self.scales.to(like.device)
        if vec.ndim == 1:
            out = (vec * scales)[None]
        else:
            if vec.shape[0] != batch:
                raise ConfigError(
                    f"per-row steering has {vec.shape[0]} vectors but the batch has {batch} rows"
                )
            out = vec * (scales[:, None] if scales.ndim == 1 else scales)
        return out.to(like.dtype)

    def __call__(self, act: torch.Tensor, hook: HookPoint | None = None) -> torch.Tensor:
        batch, seq = act.shape[0], act.shape[1]
        if seq > 1 or self._next_offset is None:
            offset = 0
            if self._prompt_len is None:
                self._prompt_len = seq
        else:
            offset = self._next_offset
        self._next_offset = offset + seq
        delta = self.delta(batch, act)[:, None, :]
        if self.positions == "all":
            return act + delta
        start = (
            (self._prompt_len or 1) - 1
            if self.positions == "from_prompt_end"
            else int(self.positions)
        )
        pos = torch.arange(offset, offset + seq, device=act.device)
        mask = (pos >= start).to(act.dtype)[None, :, None]
        return act + mask * delta


@contextmanager
def steer(
    model: LanguageModel,
    vector: torch.Tensor,
    hook_name: str,
    scale: float | torch.Tensor = 1.0,
    positions: Positions = "all",
) -> Iterator[SteeringHook]:
    """Add ``scale * vector`` at ``hook_name`` inside the block; always remove the hook after.

    Args:
        model: a HookedTransformer or TransformerBridge.
        vector: ``[d_model]`` (same vector for every row) or ``[batch, d_model]`` (one per row).
        hook_name: e.g. ``"blocks.12.hook_resid_post"``.
        scale: a float, or a ``[batch]`` tensor of per-row scales with per-row vectors.
        positions: ``"all"`` (default, SAE-TS), ``"from_prompt_end"`` (Tan et al.) or an int.

    Example::

        with steer(model, v, "blocks.12.hook_resid_post", scale=8.0):
            text = model.generate("I think", max_new_tokens=20)
    """
    check_vector(vector, model.cfg.d_model)
    hook = SteeringHook(vector, scale, positions)
    with add_hooks(model, [(hook_name, hook)]):
        yield hook


@dataclass
class SteeringVector:
    """A steering vector with the provenance needed to use it again, and refuse misuse.

    Saved as ``NAME.safetensors`` + ``NAME.json``; loaded without pickle. Loading onto a different
    model or hook is refused.
    """

    vector: torch.Tensor
    hook_name: str
    model_name: str
    method: str
    scale: float = 1.0
    target: dict[str, Any] | None = None
    sae: str | None = None
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.vector.ndim != 1:
            raise ConfigError(
                f"SteeringVector holds one [d_model] vector, got {tuple(self.vector.shape)}"
            )
        check_vector(self.vector, self.vector.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.vector.shape[0])

    def check_compatible(self, model: LanguageModel, hook_name: str | None = None) -> None:
        """Raise if this vector was made for another model or hook."""
        if model.cfg.d_model != self.d_model:
            raise ArtifactError(
                f"steering vector has d_model={self.d_model}, model {model.cfg.model_name!r} has "
                f"{model.cfg.d_model}"
            )
        if model.cfg.model_name != self.model_name:
            raise ArtifactError(
                f"steering vector was made for model {self.model_name!r}, not {model.cfg.model_name!r}"
            )
        if hook_name is not None and hook_name != self.hook_name:
            raise ArtifactError(
                f"steering vector is for hook {self.hook_name!r}, not {hook_name!r}"
            )
        _hook_point(model, self.hook_name)

    @contextmanager
    def applied(
        self, model: LanguageModel, scale: float | None = None, positions: Positions = "all"
    ) -> Iterator[SteeringHook]:
        """Steer ``model`` with this vector inside the block (scale defaults to ``self.scale``)."""
        self.check_compatible(model)
        with steer(
            model, self.vector, self.hook_name, self.scale if scale is None else scale, positions
        ) as h:
            yield h

    def save(self, path: str | Path) -> Path:
        """Write ``path.safetensors`` and ``path.json``."""
        record = {
            "kind": "steering_vector",
            "hook_name": self.hook_name,
            "model_name": self.model_name,
            "d_model": self.d_model,
            "method": self.method,
            "scale": self.scale,
            "target": self.target,
            "sae": self.sae,
            "seed": self.seed,
            "extra": self.extra,
        }
        return save_artifact(path, {"vector": self.vector}, record)

    @classmethod
    def load(
        cls,
        path: str | Path,
        model: LanguageModel | None = None,
        hook_name: str | None = None,
    ) -> SteeringVector:
        """Load a saved vector; with ``model`` (and ``hook_name``) given, refuse a mismatch."""
        tensors, rec = load_artifact(
            path,
            kind="steering_vector",
            tensors=("vector",),
            fields=("hook_name", "model_name", "method"),
        )
        sv = cls(
            vector=tensors["vector"],
            hook_name=rec["hook_name"],
            model_name=rec["model_name"],
            method=rec["method"],
            scale=float(rec.get("scale", 1.0)),
            target=rec.get("target"),
            sae=rec.get("sae"),
            seed=rec.get("seed"),
            extra=rec.get("extra") or {},
        )
        if model is not None:
            sv.check_compatible(model, hook_name)
        return sv

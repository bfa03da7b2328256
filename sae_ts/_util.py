"""Small shared helpers. Imports nothing from sae_ts, so every module can use it.

The one sink rule lives here (:func:`sink_mask`): see :mod:`sae_ts.models` for why attention
sinks are left out everywhere.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "DEFAULT_SINK_RATIO",
    "cache_dir",
    "hook_layer",
    "sha256_file",
    "sink_mask",
    "sink_threshold",
    "to_tokens",
]

DEFAULT_SINK_RATIO = 7.0


def cache_dir() -> Path:
    """The sae-ts cache directory: ``$SAE_TS_CACHE`` or the user's cache dir."""
    env = os.environ.get("SAE_TS_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("sae-ts"))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hook_layer(hook_name: str) -> int:
    """``"blocks.12.hook_resid_post"`` -> 12."""
    parts = hook_name.split(".")
    if len(parts) < 3 or parts[0] != "blocks" or not parts[1].isdigit():
        # a ValueError: _util imports nothing from sae_ts (errors.ConfigError is one too)
        raise ValueError(f"not a per-block hook name: {hook_name!r}")
    return int(parts[1])


def to_tokens(model: Any, texts: list[str] | str, prepend_bos: bool = True) -> torch.Tensor:
    """Tokenise ``texts`` (left-padded) with the document-start token prepended.

    ``""`` becomes the document-start token alone, as in the SAE-TS protocol.
    """
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise ValueError("no texts to tokenise")
    out: torch.Tensor = model.to_tokens(texts, prepend_bos=prepend_bos, padding_side="left")
    return out


def sink_threshold(ratio: float, reference_norm: float) -> float:
    """The norm above which a position is a sink: ``ratio`` × the reference norm."""
    if not ratio > 0:
        raise ValueError(f"sink ratio must be positive, got {ratio}")
    return float(ratio) * float(reference_norm)


def sink_mask(
    acts: torch.Tensor,
    ratio: float | None = DEFAULT_SINK_RATIO,
    reference_norm: float | None = None,
    first_position: bool = True,
) -> torch.Tensor:
    """The sink rule: a boolean mask over ``acts.shape[:-1]``, True at attention sinks.

    A position is a sink if its residual norm exceeds ``ratio`` × the reference norm, or if it is
    position 0 of ``[batch, pos, d]`` input (``first_position``). The reference norm is the one
    recorded for the SAE (``sink_reference_norm`` in sae-ts's SAE metadata) when given, else the
    median norm of ``acts``. ``ratio=None`` turns the norm rule off. The default ratio 7 separates
    SmolLM2's sinks (~20,000 vs ~150) with a wide margin at every layer from 10 on.
    """
    if acts.ndim < 2:
        raise ValueError(f"expected activations [..., d], got shape {tuple(acts.shape)}")
    norms = acts.detach().float().norm(dim=-1)
    mask = torch.zeros(acts.shape[:-1], dtype=torch.bool, device=acts.device)
    if ratio is not None:
        ref = float(reference_norm) if reference_norm else float(norms.median())
        mask |= norms > sink_threshold(ratio, ref)
    if first_position and acts.ndim == 3:
        mask[:, 0] = True
    return mask

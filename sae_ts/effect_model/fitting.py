"""One entry point for every fit method, and loading saved and shipped effect models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, TypeAlias

import torch

from ..artifacts import artifact_paths
from ..effects import EffectDataset
from ..errors import ConfigError, MissingFileError
from ..models import embedded_spec
from .disruption_model import DISRUPTION_KIND, DisruptionEffectModel, fit_ridge_disruption
from .first_token_model import FIRST_TOKEN_KIND, FirstTokenEffectModel, fit_ridge_first_token
from .linear import FitReport, LinearEffectModel, fit_adam, fit_ridge, fit_ridge_per_feature

__all__ = [
    "DEFAULT_EFFECT_MODEL",
    "EMBEDDED_EFFECT_MODELS",
    "FIT_METHODS",
    "FitMethod",
    "fit",
    "load_default_effect_model",
    "load_effect_model",
    "shipped_fit_method",
]


DEFAULT_EFFECT_MODEL: Path = (
    Path(__file__).resolve().parents[1] / "assets" / "smollm2-135m-res12-effects"
)
EMBEDDED_EFFECT_MODELS: dict[str, Path] = {
    "smollm2-135m": DEFAULT_EFFECT_MODEL,
    "gemma-3-270m": DEFAULT_EFFECT_MODEL.with_name("gemma-3-270m-res12-effects"),
}
"""The effect model shipped for each embedded model's SAE (by model key)."""


FitMethod: TypeAlias = Literal[
    "ridge", "ridge_per_feature", "adam", "ridge_disruption", "ridge_first_token"
]
"""Effect-model fits: CV ridge (the shipped model), ridge with a LOO strength per feature, or
the paper's Adam recipe."""

FIT_METHODS: tuple[FitMethod, ...] = (
    "ridge", "ridge_per_feature", "adam", "ridge_disruption", "ridge_first_token"
)  # fmt: skip


def fit(
    ds: EffectDataset,
    method: FitMethod = "ridge",
    holdout: int = 100,
    seed: int = 0,
    *,
    disruption: torch.Tensor | None = None,
    prior: torch.Tensor | None = None,
) -> tuple[LinearEffectModel, FitReport]:
    """Fit an effect model by ``method`` (see :data:`FIT_METHODS`). Every method returns a
    :class:`LinearEffectModel` (``ridge_disruption`` its subclass
    :class:`DisruptionEffectModel`, ``ridge_first_token``
    :class:`~sae_ts.effect_model.FirstTokenEffectModel`), so the solvers work with each.

    ``ridge_disruption`` needs ``disruption``: :func:`sae_ts.disruption.next_token_kl` of each
    vector of ``ds`` at the campaign's scale (``sae-ts fit --method ridge_disruption`` measures it).
    ``ridge_first_token`` needs ``prior``: :func:`dataset_prior` of ``ds``.
    """
    if method == "ridge_first_token":
        if prior is None:
            raise ConfigError(
                "method 'ridge_first_token' needs prior=sae_ts.effect_model.dataset_prior(model, "
                "sae, ds) for the dataset's vectors"
            )
        if disruption is not None:
            raise ConfigError("method 'ridge_first_token' takes no disruption measure")
        return fit_ridge_first_token(ds, prior, holdout=holdout, seed=seed)
    if prior is not None:
        raise ConfigError(f"method {method!r} takes no first-token prior")
    if method == "ridge_disruption":
        if disruption is None:
            raise ConfigError(
                "method 'ridge_disruption' needs disruption=next_token_kl(model, hook, ds.inputs, "
                "scale, prompts) for the dataset's vectors"
            )
        return fit_ridge_disruption(ds, disruption, holdout=holdout, seed=seed)
    if disruption is not None:
        raise ConfigError(f"method {method!r} takes no disruption measure")
    if method == "ridge":
        return fit_ridge(ds, holdout=holdout, seed=seed)
    if method == "ridge_per_feature":
        return fit_ridge_per_feature(ds, holdout=holdout, seed=seed)
    if method == "adam":
        return fit_adam(ds, holdout=holdout, seed=seed)
    raise ConfigError(f"unknown fit method {method!r}; choose one of {list(FIT_METHODS)}")


def load_default_effect_model(model: str = "smollm2-135m") -> LinearEffectModel:
    """The effect model shipped for an embedded model and its SAE (``blocks.12.hook_resid_post``).

    Fitted on the effects measured by the model's effect campaign (its record says how many
    vectors, rollouts, which scale and which fit method); see the README. SmolLM2's is a
    :class:`~sae_ts.effect_model.FirstTokenEffectModel` (ridge plus the measured first-token prior;
    its linear part is plain ridge); Gemma's a :class:`DisruptionEffectModel` (ridge plus a
    measured next-token-KL term).
    """
    if model not in EMBEDDED_EFFECT_MODELS:
        raise ConfigError(
            f"no effect model is shipped for {model!r}; the embedded models are "
            f"{sorted(EMBEDDED_EFFECT_MODELS)}"
        )
    path = DEFAULT_EFFECT_MODEL if model == "smollm2-135m" else EMBEDDED_EFFECT_MODELS[model]
    if not path.with_suffix(".safetensors").exists():
        raise MissingFileError(
            f"no shipped effect model for {model} at {path}; estimate one with "
            "`sae-ts estimate` and `sae-ts fit` (see benchmarks/effect_campaign.py)"
        )
    return load_effect_model(path)  # stored in fp16 to keep the wheel small; float32 here


def shipped_fit_method(model: str) -> FitMethod:
    """The fit method of the effect model shipped for ``model`` (an embedded model's key or
    name); ``"ridge"`` for any other model, or when none is shipped yet."""
    try:
        path = EMBEDDED_EFFECT_MODELS.get(embedded_spec(model).key)
    except ConfigError:  # not an embedded model
        return "ridge"
    if path is None or not artifact_paths(path)[1].exists():
        return "ridge"
    try:
        method = json.loads(artifact_paths(path)[1].read_text()).get("fit", {}).get("method")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return "ridge"
    return method if method in FIT_METHODS else "ridge"


def load_effect_model(path: str | Path) -> LinearEffectModel:
    """A saved effect model of any fit method (safetensors + JSON record), in float32: a
    :class:`LinearEffectModel`, a :class:`DisruptionEffectModel` for ``ridge_disruption``, or a
    :class:`~sae_ts.effect_model.FirstTokenEffectModel` for ``ridge_first_token``."""
    json_path = artifact_paths(path)[1]
    kind = None
    if json_path.exists():
        try:
            kind = json.loads(json_path.read_text()).get("kind")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            kind = None  # load_artifact below names the damage
    if kind == DISRUPTION_KIND:
        return DisruptionEffectModel.load(path)
    if kind == FIRST_TOKEN_KIND:
        return FirstTokenEffectModel.load(path)
    em = LinearEffectModel.load(path)
    return LinearEffectModel(em.W.float(), em.b.float(), em.record)

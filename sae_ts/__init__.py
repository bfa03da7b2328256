"""sae-ts: SAE-Targeted Steering for TransformerLens models.

Pick target features of a sparse autoencoder, get a steering vector that moves those features and
little else, and measure how reliable it is.

Quick start::

    import sae_ts
    model, sae, hook = sae_ts.load_default()          # embedded SmolLM2-135M + its SAE, offline
    with sae_ts.steer(model, sae.W_dec[123], hook, scale=40.0):
        text = model.generate("I think", max_new_tokens=20)

This namespace holds the curated public API. Everything else is importable from its module:
:mod:`sae_ts.models` (the embedded model), :mod:`sae_ts.sae` (SAE loading, sink-aware encoding,
quality), :mod:`sae_ts.artifacts`, :mod:`sae_ts.errors`, :mod:`sae_ts.types`,
:mod:`sae_ts.judges`, :mod:`sae_ts.experiments`, :mod:`sae_ts.training`, :mod:`sae_ts.features`
and :mod:`sae_ts.testing` (tiny models for tests).
"""

from __future__ import annotations

from importlib import metadata as _metadata

from .baselines import caa_vector, find_features, sae_latent_vector
from .effect_model import FitReport, LinearEffectModel, fit_adam, fit_ridge, load_effect_model
from .effects import (
    EffectConfig,
    EffectDataset,
    EffectEstimator,
    calibrate_scales,
    decoder_directions,
    estimate_effects,
    random_directions,
)
from .errors import SaeTsError
from .evaluation import Measurement, measure_vector
from .generation import generate
from .loading import Loaded, load, load_default
from .solver import Target, refine, solve, solve_with_info
from .steering import SteeringHook, SteeringVector, steer

try:
    __version__ = _metadata.version("sae-ts")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = [
    "EffectConfig",
    "EffectDataset",
    "EffectEstimator",
    "FitReport",
    "LinearEffectModel",
    "Loaded",
    "Measurement",
    "SaeTsError",
    "SteeringHook",
    "SteeringVector",
    "Target",
    "__version__",
    "caa_vector",
    "calibrate_scales",
    "decoder_directions",
    "estimate_effects",
    "find_features",
    "fit_adam",
    "fit_ridge",
    "generate",
    "load",
    "load_default",
    "load_effect_model",
    "measure_vector",
    "random_directions",
    "refine",
    "sae_latent_vector",
    "solve",
    "solve_with_info",
    "steer",
]

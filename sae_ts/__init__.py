"""sae-ts: SAE-Targeted Steering for TransformerLens models.

Pick target features of a sparse autoencoder, get a steering vector that moves those features and
little else, and measure how reliable it is.

Quick start::

    import sae_ts
    model, sae, hook = sae_ts.load_default()          # embedded SmolLM2-135M + its SAE, offline
    with sae_ts.steer(model, sae.W_dec[123], hook, scale=40.0):
        print(model.generate("I think", max_new_tokens=20))
"""

from __future__ import annotations

from importlib import metadata as _metadata

from .artifacts import ArtifactError, load_artifact, save_artifact
from .baselines import caa_vector, find_features, sae_latent_vector
from .effect_model import FitReport, LinearEffectModel, fit_adam, fit_ridge
from .effects import (
    EffectConfig,
    EffectDataset,
    EffectEstimator,
    calibrate_scales,
    decoder_directions,
    estimate_effects,
    random_directions,
)
from .evaluation import Measurement, measure_vector
from .models import (
    HubUnavailableError,
    Loaded,
    ModelFetchError,
    check_pair,
    fetch_embedded_model,
    load,
    load_default,
    load_default_model,
    sink_mask,
    tiny_model,
    to_tokens,
)
from .solver import Target, refine, solve
from .steering import SteeringHook, SteeringVector, add_hooks, generate, steer

try:
    __version__ = _metadata.version("sae-ts")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = [
    "ArtifactError",
    "EffectConfig",
    "EffectDataset",
    "EffectEstimator",
    "FitReport",
    "HubUnavailableError",
    "LinearEffectModel",
    "Loaded",
    "Measurement",
    "ModelFetchError",
    "SteeringHook",
    "SteeringVector",
    "Target",
    "__version__",
    "add_hooks",
    "caa_vector",
    "calibrate_scales",
    "check_pair",
    "decoder_directions",
    "estimate_effects",
    "fetch_embedded_model",
    "find_features",
    "fit_adam",
    "fit_ridge",
    "generate",
    "load",
    "load_artifact",
    "load_default",
    "load_default_model",
    "measure_vector",
    "random_directions",
    "refine",
    "sae_latent_vector",
    "save_artifact",
    "sink_mask",
    "solve",
    "steer",
    "tiny_model",
    "to_tokens",
]

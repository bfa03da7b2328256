"""The linear effect model: ``effect ≈ v @ W + b`` (W is d_model x d_sae).

Fits on the same :class:`~sae_ts.effects.EffectDataset`, behind one entry point, :func:`fit`
(``method=``; ``ridge_per_feature`` and ``ridge_disruption``, which adds a measured disruption
term, are described in their functions and in :mod:`sae_ts.disruption`; ``ridge_first_token``,
which adds the measured first-token prior, in :class:`FirstTokenEffectModel` and
:mod:`sae_ts.first_token`):

* :func:`fit_ridge` (default): closed-form ridge regression through one SVD per fold
  (``torch.linalg.svd``), the ridge strength chosen by k-fold cross-validation on the training part;
  the intercept is not penalised.
* :func:`fit_adam`: the SAE-TS paper's fit (linear layer with bias, MSE, Adam lr 2e-4, 15 epochs,
  batch 64, cosine schedule), for parity.

Both hold out the *last* ``holdout`` samples (the paper held out the last 100) and report
variance-weighted R² and the mean cosine between predicted and measured effects on them.

The stage is split by model: :mod:`.linear` (``v @ W + b`` and its fits), :mod:`.disruption_model`
and :mod:`.first_token_model` (the two measured terms), :mod:`.fitting` (the one :func:`fit` entry
point, loading), :mod:`.heldout` (fit quality against the noise ceiling). Everything public is
imported from here.
"""

from __future__ import annotations

from .disruption_model import (
    DisruptionEffectModel,
    dataset_disruption,
    fit_ridge_disruption,
)
from .first_token_model import (
    FirstTokenEffectModel,
    dataset_prior,
    fit_ridge_first_token,
    prior_spec,
)
from .fitting import (
    DEFAULT_EFFECT_MODEL,
    FIT_METHODS,
    FitMethod,
    fit,
    load_default_effect_model,
    load_effect_model,
    shipped_fit_method,
)
from .fitting import (
    EMBEDDED_EFFECT_MODELS as EMBEDDED_EFFECT_MODELS,
)
from .heldout import RolloutReliability, evaluate_heldout, linear_share, noise_ceiling
from .linear import (
    FitReport,
    LinearEffectModel,
    UnderdeterminedFitWarning,
    effect_metrics,
    fit_adam,
    fit_ridge,
    fit_ridge_per_feature,
)

__all__ = [
    "DEFAULT_EFFECT_MODEL",
    "FIT_METHODS",
    "DisruptionEffectModel",
    "FirstTokenEffectModel",
    "FitMethod",
    "FitReport",
    "LinearEffectModel",
    "RolloutReliability",
    "UnderdeterminedFitWarning",
    "dataset_disruption",
    "dataset_prior",
    "effect_metrics",
    "evaluate_heldout",
    "fit",
    "fit_adam",
    "fit_ridge",
    "fit_ridge_disruption",
    "fit_ridge_first_token",
    "fit_ridge_per_feature",
    "linear_share",
    "load_default_effect_model",
    "load_effect_model",
    "noise_ceiling",
    "prior_spec",
    "shipped_fit_method",
]

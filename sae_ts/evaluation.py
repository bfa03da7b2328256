"""Evaluation: measure what any steering vector does to SAE features, and compare with predictions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .effect_model import DisruptionEffectModel, FirstTokenEffectModel, LinearEffectModel
from .effects import EffectEstimator
from .errors import ConfigError
from .solver import Target, target_stats

__all__ = ["Measurement", "measure_vector"]


@dataclass
class Measurement:
    """A vector's measured effect at one scale, with the target statistics."""

    scale: float
    effect: torch.Tensor  # [d_sae] measured mean feature shift vs the unsteered baseline
    target_effect: float
    off_target_norm: float
    target_share: float
    predicted: dict[str, float] | None = None
    predicted_cosine: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, float | None]:
        """The scalar fields, for tables."""
        return {
            "scale": self.scale,
            "target_effect": self.target_effect,
            "off_target_norm": self.off_target_norm,
            "target_share": self.target_share,
            "predicted_target_effect": None
            if self.predicted is None
            else self.predicted["target_effect"],
            "predicted_cosine": self.predicted_cosine,
            **(
                {"next_token_kl": self.extra["next_token_kl"]}
                if "next_token_kl" in self.extra
                else {}
            ),
        }


def measure_vector(
    estimator: EffectEstimator,
    vector: torch.Tensor,
    scale: float,
    target: Target,
    baseline: torch.Tensor | None = None,
    effect_model: LinearEffectModel | None = None,
    rollouts: int | None = None,
    vector_id: int = 10**9,
    progress: bool = False,
) -> Measurement:
    """Measure ``scale * unit(vector)``: effect, target effect, off-target norm, target share.

    With ``effect_model`` the predicted statistics and cosine(predicted, measured) are added. The
    model predicts the effect of a unit direction at the scale it was fitted for, so the
    comparison is meaningful at that scale. ``baseline`` defaults to a fresh unsteered baseline.
    """
    if vector.ndim != 1:
        raise ConfigError(f"measure one [d_model] vector at a time, got {tuple(vector.shape)}")
    unit = vector.float() / vector.float().norm()
    target.validate(estimator.d_sae)
    if baseline is None:
        baseline = estimator.baseline(progress=progress, rollouts=rollouts)
    means = estimator.measure(
        unit, scale, vector_ids=[vector_id], rollouts=rollouts, progress=progress
    )[0]
    effect = means - baseline
    stats = target_stats(effect, target)
    m = Measurement(
        scale, effect, stats["target_effect"], stats["off_target_norm"], stats["target_share"]
    )
    if effect_model is not None:
        if isinstance(effect_model, DisruptionEffectModel):  # measure z(v) with one forward pass
            z = effect_model.measure_z(estimator.model, unit[None].to(effect_model.W))
            pred = effect_model.predict(unit[None].to(effect_model.W), z)[0].to(effect)
            m.extra["next_token_kl"] = float(z[0])  # at the effect model's scale
        elif isinstance(effect_model, FirstTokenEffectModel):  # the prior: one forward pass
            u = unit.to(effect_model.W)
            pred = effect_model.predict_measured(estimator.model, estimator.sae, u).to(effect)
        else:
            pred = effect_model.predict(unit)
        m.predicted = target_stats(pred, target)
        m.predicted_cosine = float(torch.nn.functional.cosine_similarity(pred, effect, dim=0))
    return m

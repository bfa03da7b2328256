"""How good an effect model is: its held-out fit beside the noise ceiling of the measurements,
the share of the effects any linear model can explain, and rollout reliability.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..effects import EffectDataset
from ..errors import ConfigError
from .disruption_model import DisruptionEffectModel
from .first_token_model import FirstTokenEffectModel
from .linear import LinearEffectModel, effect_metrics

__all__ = ["RolloutReliability", "evaluate_heldout", "linear_share", "noise_ceiling"]


def noise_ceiling(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Split-half reliability of two independent measurements ``a``, ``b`` (``[n, d_sae]``).

    Returns ``split_half_r2`` (variance-weighted R² of one half against the other, centred over
    vectors), ``ceiling`` (the R² a perfect model of the true effects would reach against the
    average ``(a + b) / 2``, since ``||a - b||² / 4`` estimates that average's noise) and
    ``centred_cosine`` (mean per-vector cosine of the two halves, each centred over vectors).
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"two [n, d_sae] halves needed, got {tuple(a.shape)}, {tuple(b.shape)}")
    a, b = a.double(), b.double()
    sse = float(((a - b) ** 2).sum())
    sst_a = float(((a - a.mean(0)) ** 2).sum())
    sst_b = float(((b - b.mean(0)) ** 2).sum())
    m = (a + b) / 2
    sst_m = float(((m - m.mean(0)) ** 2).sum())
    cos = torch.nn.functional.cosine_similarity(a - a.mean(0), b - b.mean(0), dim=-1, eps=1e-12)
    return {
        "split_half_r2": 1 - sse / ((sst_a + sst_b) / 2) if sst_a + sst_b > 0 else float("nan"),
        "ceiling": 1 - (sse / 4) / sst_m if sst_m > 0 else float("nan"),
        "centred_cosine": float(cos.mean()),
    }


def linear_share(
    plus: tuple[torch.Tensor, torch.Tensor], minus: tuple[torch.Tensor, torch.Tensor]
) -> dict[str, float]:
    """How much of the effects of ``±v`` any model linear in ``v`` can explain, noise removed.

    ``plus`` holds two independent measurements (halves) of the effects of directions ``v_i``
    (``[n, d_sae]`` each, baseline subtracted), ``minus`` the same for ``-v_i``. The effect splits
    into an odd part ``(e(v) - e(-v)) / 2``, which a linear model can fit, and an even part
    ``(e(v) + e(-v)) / 2`` (generic disruption: a random direction and its negation break the text
    in the same way), which it cannot, apart from its mean over vectors (the intercept absorbs
    that). Each part's energy is estimated from the cross-product of the two halves, which is
    unbiased under independent noise. Returns ``odd`` and ``even`` (those energies, summed over
    vectors and latents) and ``linear_share = odd / (odd + even)``: an upper bound on the R²,
    relative to the noise ceiling, of ``v @ W + b`` on these directions at this scale.
    """
    shapes = {tuple(t.shape) for t in (*plus, *minus)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ConfigError(f"four [n, d_sae] measurements of one shape needed, got {shapes}")
    odd = [(p.double() - m.double()) / 2 for p, m in zip(plus, minus, strict=True)]
    even = [(p.double() + m.double()) / 2 for p, m in zip(plus, minus, strict=True)]
    even = [e - e.mean(0) for e in even]
    o = float((odd[0] * odd[1]).sum())
    e = float((even[0] * even[1]).sum())
    return {"odd": o, "even": e, "linear_share": o / (o + e) if o + e > 0 else float("nan")}


@dataclass(frozen=True)
class RolloutReliability:
    """How reliable a measurement with ``k`` rollouts per prompt is (noise variance ∝ 1/k).

    ``signal``: the variance of the true effects over vectors; ``noise_per_rollout``: the noise
    variance of a one-rollout measurement (both summed over latents and vectors, centred over
    vectors). ``at(k)`` is the reliability ``signal / (signal + noise_per_rollout / k)`` of a
    ``k``-rollout measurement: the R² its true effects reach against it (Spearman-Brown), which
    for the average of two halves is :func:`noise_ceiling`'s ``ceiling``.
    """

    signal: float
    noise_per_rollout: float

    @classmethod
    def from_halves(cls, a: torch.Tensor, b: torch.Tensor, rollouts: int) -> RolloutReliability:
        """From two independent measurements ``a``, ``b`` of ``rollouts`` rollouts per prompt."""
        if a.shape != b.shape or a.ndim != 2:
            raise ConfigError(
                f"two [n, d_sae] halves needed, got {tuple(a.shape)}, {tuple(b.shape)}"
            )
        if rollouts < 1:
            raise ConfigError(f"rollouts must be >= 1, got {rollouts}")
        a, b = a.double(), b.double()
        m = (a + b) / 2
        noise_m = float(((a - b) ** 2).sum()) / 4  # the noise of the 2 x rollouts average
        sst_m = float(((m - m.mean(0)) ** 2).sum())
        return cls(sst_m - noise_m, noise_m * 2 * rollouts)

    def at(self, k: float) -> float:
        """Reliability of a measurement with ``k`` rollouts per prompt (nan without signal)."""
        if k <= 0:
            raise ConfigError(f"k must be > 0, got {k}")
        if self.signal <= 0:
            return float("nan")
        return self.signal / (self.signal + self.noise_per_rollout / k)

    def rollouts_for(self, target: float) -> float:
        """Rollouts per prompt (not rounded) at which the reliability reaches ``target``.

        ``inf`` when the halves show no signal above the noise.
        """
        if not 0 < target < 1:
            raise ConfigError(f"target reliability must be in (0, 1), got {target}")
        if self.signal <= 0:
            return float("inf")
        return self.noise_per_rollout / self.signal * target / (1 - target)


def evaluate_heldout(
    model: LinearEffectModel,
    test_a: EffectDataset,
    test_b: EffectDataset,
    groups: list[str] | None = None,
    features: list[int] | None = None,
    baseline: torch.Tensor | None = None,
    disruption: torch.Tensor | None = None,
    prior: torch.Tensor | None = None,
) -> dict[str, dict[str, float]]:
    """Held-out fit of ``model`` next to its noise ceiling, overall and per group of vectors.

    ``test_a`` and ``test_b`` measure the same held-out directions with independent random
    streams; the model is scored against their average. ``baseline``: the unsteered baseline
    that the model's training effects are relative to (``train.baseline``). When given, both
    halves are first re-referenced to it (:meth:`EffectDataset.rebase`), so that the sampling
    error of a test run's own baseline, a constant offset that no model of ``v`` can predict,
    is not scored as model error (nor as noise in the ceiling). Without it each half keeps
    its own baseline (the protocol before issue #26's fix). Per group (e.g. ``"dec"`` / ``"gauss"``,
    one label per vector) and overall, the result holds ``r2``, ``ceiling``, ``r2_over_ceiling``,
    ``split_half_r2``, ``cosine`` (predicted vs measured effect) and ``cosine_minus_b`` (cosine of
    ``v @ W`` with measured − b, the part of the effect that depends on the direction).
    With ``features``, ``r2`` and ``ceiling`` are also given on those latents only
    (``r2_features``, ``ceiling_features``): the latents that targets use. ``disruption``: for a
    :class:`DisruptionEffectModel`, the measured ``z`` of each held-out
    direction (the model predicts with it); ``prior``, likewise, the measured first-token prior
    of each held-out direction for a :class:`~sae_ts.effect_model.FirstTokenEffectModel`.
    """
    if not torch.allclose(test_a.inputs, test_b.inputs, atol=1e-3):
        raise ValueError("test_a and test_b must measure the same directions, in the same order")
    if baseline is not None:
        test_a, test_b = test_a.rebase(baseline), test_b.rebase(baseline)
    n = len(test_a)
    labels = groups or ["all"] * n
    if len(labels) != n:
        raise ValueError(f"{len(labels)} group labels for {n} test vectors")
    x = test_a.inputs.float()
    y = (test_a.effects.float() + test_b.effects.float()) / 2
    if prior is not None:
        if not isinstance(model, FirstTokenEffectModel) or disruption is not None:
            raise ConfigError("prior= is the measured prior of a FirstTokenEffectModel")
        pred = model.predict(x, prior)
    elif disruption is None:
        pred = model.predict(x)
    else:
        if not isinstance(model, DisruptionEffectModel):
            raise ConfigError("disruption= is the measured z of a DisruptionEffectModel")
        pred = model.predict(x, disruption)
    out: dict[str, dict[str, float]] = {}
    for g in ["all", *sorted(set(labels) - {"all"})]:
        idx = [i for i in range(n) if g == "all" or labels[i] == g]
        if len(idx) < 2:
            continue
        r2, cos = effect_metrics(pred[idx], y[idx])
        nc = noise_ceiling(test_a.effects[idx], test_b.effects[idx])
        cos_b = torch.nn.functional.cosine_similarity(
            x[idx] @ model.W, y[idx] - model.b, dim=-1, eps=1e-12
        )
        row = {
            "n": float(len(idx)),
            "r2": r2,
            "ceiling": nc["ceiling"],
            "r2_over_ceiling": r2 / nc["ceiling"] if nc["ceiling"] > 0 else float("nan"),
            "split_half_r2": nc["split_half_r2"],
            "cosine": cos,
            "cosine_minus_b": float(cos_b.mean()),
        }
        if features:
            f = list(features)
            row["r2_features"] = effect_metrics(pred[idx][:, f], y[idx][:, f])[0]
            row["ceiling_features"] = noise_ceiling(
                test_a.effects[idx][:, f], test_b.effects[idx][:, f]
            )["ceiling"]
        out[g] = row
    return out

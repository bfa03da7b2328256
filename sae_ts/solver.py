"""Solvers: from a target over SAE features to a unit steering direction.

Methods (all return unit-norm ``[d_model]`` directions; the scale is chosen afterwards):

* ``"sae_ts"`` — the paper's rule ``normalize(normalize(W t) - λ normalize(W b))``, λ = 1.
* ``"pinv"`` — the least-squares input for the target effect, ``(t - b) @ pinv(W)``, normalised
  (the paper's pinv baseline was not normalised).
* ``"targeted"`` — sae-ts's solver. Over unit vectors ``v`` with predicted effect
  ``e(v) = v W + b`` it maximises::

      a · e(v)  -  μ · ( ||e(v)[off]||²  +  hold_weight · ||e(v)[hold]||² )

  where ``a`` holds the raise weights (and minus the suppress weights), ``off`` is every feature
  not in the target and ``hold`` the features to keep still. On the unit sphere this is a
  trust-region subproblem: it is solved exactly through one eigendecomposition and a 1-D secular
  equation (``scipy.optimize.brentq``). μ is chosen from a log grid as the value that maximises
  the predicted *target share* among solutions keeping at least ``min_target_fraction`` of the
  largest achievable predicted target effect.

``solve(..., within=rows)`` restricts ``"targeted"`` to the span of some rows, and
:func:`solve_in_decoder_span` to the target latents' own decoder rows (plus ``k`` helper rows),
never steering against a target latent. Where the effect model predicts well only near the
directions it was fitted on (SAE decoder rows: Gemma 3 270M's), the whole-space optimum exploits
its errors; inside the span it cannot.

With a :class:`~sae_ts.effect_model.FirstTokenEffectModel`, ``solve(..., lm=model, sae=sae)``
starts ``"targeted"`` from its linear part's solution and ascends the same objective with the
whole model, ``e(v) = v W_direct + π̃(v) M + b_direct``: the first-token prior ``π(v)`` is
measured and differentiated on the language model at each step (one forward and backward pass
per effect prompt). The linear part is plain ridge and cannot see which tokens a vector tips the
model into; the whole model can.

:func:`refine` closes the loop: measure the solved vector's real effect, treat the model's error as
a local bias correction, solve again, and report predicted vs measured at each step.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.optimize import brentq

from .effect_model import DisruptionEffectModel, FirstTokenEffectModel, LinearEffectModel
from .errors import ConfigError
from .types import LanguageModel, Method

__all__ = [
    "Method",
    "RefineStep",
    "Target",
    "decoder_span",
    "parse_feature_spec",
    "parse_id_list",
    "predicted_stats",
    "refine",
    "solve",
    "solve_in_decoder_span",
    "solve_with_info",
    "target_stats",
]


_ID = re.compile(r"[0-9]+")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _entries(spec: str, what: str) -> list[str]:
    if not isinstance(spec, str):
        raise ConfigError(f"{what}: expected a string, got {type(spec).__name__}")
    parts = [p.strip() for p in spec.split(",")]
    if any(not p for p in parts):
        raise ConfigError(f"{what}: empty entry in {spec!r} (a doubled or trailing comma?)")
    return parts


def _feature_id(text: str, what: str) -> int:
    # ASCII digits only: str.isdigit() and int() also take other scripts' digits ("１")
    if not _ID.fullmatch(text):
        raise ConfigError(f"{what}: {text!r} is not a feature id (ASCII digits 0-9)")
    return int(text)


def parse_feature_spec(spec: str | None, what: str = "--features") -> dict[int, float]:
    """``"12:1.0, 45:0.5, 7"`` -> ``{12: 1.0, 45: 0.5, 7: 1.0}``: ids with positive weights.

    Entries are ``ID`` (weight 1) or ``ID:WEIGHT``, separated by commas; spaces around ids, colons
    and weights are ignored. Refused, with a message naming ``what``: an empty entry or weight,
    an id that is not ASCII digits, a weight that is not a finite number in (0, float32 max], and
    an id given twice (even with equal weights). ``None`` or ``""`` is no feature.
    """
    out: dict[int, float] = {}
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return out
    for part in _entries(spec, what):
        fid, sep, w = (x.strip() for x in part.partition(":"))
        i = _feature_id(fid, what)
        if sep and not w:
            raise ConfigError(f"{what}: {part!r} has an empty weight (use ID or ID:WEIGHT)")
        try:
            weight = float(w) if sep else 1.0
        except ValueError as e:
            raise ConfigError(f"{what}: weight {w!r} of feature {i} is not a number") from e
        if not (np.isfinite(weight) and 0 < weight <= _FLOAT32_MAX):
            raise ConfigError(
                f"{what}: weight {w!r} of feature {i} must be a finite number in "
                f"(0, {_FLOAT32_MAX:.4g}]"
            )
        if i in out:
            raise ConfigError(f"{what}: feature {i} is given twice")
        out[i] = weight
    return out


def parse_id_list(spec: str | None, what: str = "--hold") -> list[int]:
    """``"7, 8"`` -> ``[7, 8]``: feature ids without weights; duplicates and weights refused."""
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return []
    ids = []
    for part in _entries(spec, what):
        if ":" in part:
            raise ConfigError(f"{what}: {part!r}: these features take no weight")
        i = _feature_id(part, what)
        if i in ids:
            raise ConfigError(f"{what}: feature {i} is given twice")
        ids.append(i)
    return ids


@dataclass(frozen=True)
class Target:
    """What to steer towards: features to raise (with weights), hold still, or push down."""

    raise_: Mapping[int, float]
    hold: Sequence[int] = ()
    suppress: Mapping[int, float] = field(default_factory=dict)

    @classmethod
    def of(cls, features: Mapping[int, float] | Sequence[int] | int, **kw: Any) -> Target:
        """``Target.of(123)``, ``Target.of([1, 2])`` or ``Target.of({1: 1.0, 2: 0.5})``."""
        if isinstance(features, int):
            features = {features: 1.0}
        elif not isinstance(features, Mapping):
            features = {int(f): 1.0 for f in features}
        return cls(dict(features), **kw)

    def validate(self, d_sae: int) -> None:
        """Raise a clear error for empty targets, unknown ids, bad weights or overlaps."""
        if not self.raise_:
            raise ConfigError("target has no features to raise")
        ids = [*self.raise_, *self.hold, *self.suppress]
        bad = [i for i in ids if not isinstance(i, (int, np.integer)) or not 0 <= int(i) < d_sae]
        if bad:
            raise ConfigError(f"feature ids out of range [0, {d_sae}): {bad[:10]}")
        weights = [*self.raise_.values(), *self.suppress.values()]
        if not all(np.isfinite(w) and w > 0 for w in weights):
            raise ConfigError("feature weights must be finite and > 0")
        overlap = (
            (set(self.raise_) & set(self.hold))
            | (set(self.raise_) & set(self.suppress))
            | (set(self.hold) & set(self.suppress))
        )
        if overlap:
            raise ConfigError(f"features in more than one role: {sorted(overlap)}")

    def dense(self, d_sae: int) -> torch.Tensor:
        """The target vector ``t``: raise weights positive, suppress weights negative."""
        self.validate(d_sae)
        t = torch.zeros(d_sae)
        for i, w in self.raise_.items():
            t[int(i)] = w
        for i, w in self.suppress.items():
            t[int(i)] = -w
        return t

    def to_dict(self) -> dict[str, Any]:
        return {
            "raise": {int(k): float(v) for k, v in self.raise_.items()},
            "hold": [int(i) for i in self.hold],
            "suppress": {int(k): float(v) for k, v in self.suppress.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Target:
        return cls(
            {int(k): float(v) for k, v in d["raise"].items()},
            [int(i) for i in d.get("hold", [])],
            {int(k): float(v) for k, v in d.get("suppress", {}).items()},
        )


def _unit(x: torch.Tensor) -> torch.Tensor:
    n = x.norm()
    if not torch.isfinite(n) or n == 0:
        raise ConfigError("cannot normalise a zero or non-finite vector")
    return x / n


def target_stats(effect: torch.Tensor, target: Target) -> dict[str, float]:
    """Target effect, off-target norm and target share of one effect vector.

    * ``target_effect``: ``Σ w_i e_i`` over raise features minus ``Σ w_i e_i`` over suppress
      features, divided by the total weight (a weighted mean shift of the target).
    * ``off_target_norm``: L2 norm of the effect on every feature outside the target.
    * ``target_share``: wanted effect mass / total effect mass,
      ``Σ_raise max(e,0) + Σ_suppress max(-e,0)`` over ``Σ |e|``.
    """
    e = effect.double()
    d = e.shape[0]
    t = target.dense(d).double()
    total_w = t.abs().sum()
    raise_ids = [int(i) for i in target.raise_]
    sup_ids = [int(i) for i in target.suppress]
    mask = torch.zeros(d, dtype=torch.bool)
    mask[raise_ids + sup_ids] = True
    wanted = e[raise_ids].clamp_min(0).sum() + (-e[sup_ids]).clamp_min(0).sum()
    mass = e.abs().sum()
    return {
        "target_effect": float((t * e).sum() / total_w),
        "off_target_norm": float(e[~mask].norm()),
        "target_share": float(wanted / mass) if mass > 0 else 0.0,
    }


def predicted_stats(model: LinearEffectModel, v: torch.Tensor, target: Target) -> dict[str, float]:
    """:func:`target_stats` of the model's predicted effect of ``v``."""
    return target_stats(model.predict(v.float()), target)


def _solve_sae_ts(model: LinearEffectModel, t: torch.Tensor, lam: float) -> torch.Tensor:
    Wt = model.W.double() @ t.double()
    Wb = model.W.double() @ model.b.double()
    if lam == 0 or Wb.norm() == 0:  # no bias direction to steer away from
        return _unit(Wt).float()
    return _unit(_unit(Wt) - lam * _unit(Wb)).float()


def _solve_pinv(model: LinearEffectModel, t: torch.Tensor) -> torch.Tensor:
    v = (t.double() - model.b.double()) @ torch.linalg.pinv(model.W.double())
    return _unit(v).float()


def _trust_region(g: np.ndarray, evals: np.ndarray, evecs: np.ndarray) -> np.ndarray:
    """argmax_{|v|=1} g·v - vᵀQv for PSD Q = V diag(evals) Vᵀ (exact, via the secular equation)."""
    gt = evecs.T @ g
    lo = -evals.min()

    def norm_minus_one(lam: float) -> float:
        return float(np.linalg.norm(gt / (2 * (evals + lam))) - 1.0)

    # ||v(λ)|| decreases from +inf (λ -> -λmin, unless g ⟂ that eigenvector) to 0 (λ -> inf)
    eps = 1e-12 * max(1.0, abs(lo))
    left = lo + eps
    if norm_minus_one(left) < 0:  # the "hard case": g has no weight on the smallest eigenvector
        v = evecs @ (gt / (2 * (evals + left)))
        rest = np.sqrt(max(0.0, 1 - float(v @ v)))
        return v + rest * evecs[:, int(np.argmin(evals))]
    right = lo + 1.0
    while norm_minus_one(right) > 0:
        right = lo + 2 * (right - lo)
    lam = brentq(norm_minus_one, left, right, xtol=1e-14, rtol=1e-12)
    v = evecs @ (gt / (2 * (evals + lam)))
    return v / np.linalg.norm(v)


def _orthonormal_rows(within: torch.Tensor, d_model: int) -> np.ndarray:
    """An orthonormal basis (rows) of the span of ``within``'s rows, checked."""
    if within.ndim != 2 or within.shape[1] != d_model:
        raise ConfigError(
            f"within must be [k, d_model={d_model}] rows spanning the allowed directions, "
            f"got shape {tuple(within.shape)}"
        )
    if within.shape[0] == 0 or not torch.isfinite(within).all():
        raise ConfigError("within must hold at least one row, all finite")
    A = within.double().numpy()
    u, s, _ = np.linalg.svd(A.T, full_matrices=False)
    keep = s > s.max() * 1e-8
    return np.ascontiguousarray(u[:, keep].T)


def decoder_span(
    model: LinearEffectModel,
    W_dec: torch.Tensor,
    target: Target | Mapping[int, float] | Sequence[int] | int,
    k: int = 0,
) -> tuple[torch.Tensor, list[int]]:
    """Decoder rows to pass as ``solve(..., within=...)``: the target's raise and suppress latents
    and the ``k`` latents whose own (unit) decoder row the effect model predicts to move the target
    most.

    A solution in this span is a weighted mix of a few SAE latents: the kind of direction the
    effect model was fitted on (decoder rows), where its predictions hold better than on arbitrary
    directions. ``W_dec`` is the SAE's ``[d_sae, d_model]`` decoder, on any device or dtype.
    Returns the rows ``[n, d_model]`` (float32, CPU) and their latent ids.
    """
    tgt = target if isinstance(target, Target) else Target.of(target)
    if W_dec.ndim != 2 or tuple(W_dec.shape) != (model.d_sae, model.d_model):
        raise ConfigError(
            f"W_dec must be [d_sae={model.d_sae}, d_model={model.d_model}], "
            f"got {tuple(W_dec.shape)}"
        )
    if k < 0:
        raise ConfigError(f"k must be >= 0, got {k}")
    tgt.validate(model.d_sae)
    D = W_dec.detach().to("cpu", torch.float64)  # as the SAE holds it: any device or dtype
    D = D / D.norm(dim=1, keepdim=True).clamp_min(1e-30)
    gain = D @ (model.W.double() @ tgt.dense(model.d_sae).double())  # a · (d_i W) per latent
    ids = [int(i) for i in (*tgt.raise_, *tgt.suppress)]
    n_own = len(ids)
    for i in torch.argsort(gain, descending=True).tolist():
        if len(ids) >= n_own + k:
            break
        if i not in ids:
            ids.append(int(i))
    return D[ids].float(), ids


def solve_in_decoder_span(
    model: LinearEffectModel,
    W_dec: torch.Tensor,
    target: Target | Mapping[int, float] | Sequence[int] | int,
    k: int = 0,
    **solve_kw: Any,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """``"targeted"`` within :func:`decoder_span`, never steering against a target latent.

    The solution is a mix of the target latents' decoder rows (and ``k`` helper rows). While a
    raise latent's row gets a negative weight (a suppress latent's, a positive one), the most
    wrong one is dropped from the span and the problem solved again; if only one target row is
    left and it still points the wrong way, the answer is that row, pointed the wanted way
    (the info then says ``fallback``, with the row's predicted stats only).
    ``solve_kw`` goes to :func:`solve_with_info` (``mu``, ``lm``, ``max_disruption`` ...).
    Returns the unit vector and the info of the last solve, plus ``span_ids`` and
    ``span_weights`` (the vector's coefficients on those unit decoder rows) and ``dropped``.

    On Gemma 3 270M this is what lets the solver use its effect model without leaving the
    directions it was fitted on (``benchmarks/effect_model_targets.py``, the ``targeted_span``
    row).
    """
    tgt = target if isinstance(target, Target) else Target.of(target)
    rows, ids = decoder_span(model, W_dec, tgt, k)
    sign = {int(i): 1.0 for i in tgt.raise_} | {int(i): -1.0 for i in tgt.suppress}
    dropped: list[int] = []
    while True:
        v, info = solve_with_info(model, tgt, "targeted", within=rows, **solve_kw)
        coef = torch.linalg.lstsq(rows.double().T, v.double()[:, None]).solution[:, 0]
        signed = {j: sign[i] * float(coef[j]) for j, i in enumerate(ids) if i in sign}
        worst = min(signed, key=lambda j: signed[j])
        if signed[worst] >= 0:
            break
        if len(signed) == 1:  # the last target row, still the wrong way: that row, signed
            j = worst
            v = (sign[ids[j]] * rows[j] / rows[j].norm()).float()
            rows, ids, coef = rows[j : j + 1], [ids[j]], torch.tensor([sign[ids[j]]])
            # the last solve's μ, ν and disruption describe another vector: not this row's
            info = {"method": "targeted", "fallback": "the last target row, pointed the wanted way",
                    "predicted": _predicted(model, v, tgt, solve_kw.get("lm"))}  # fmt: skip
            break
        dropped.append(ids[worst])  # the most wrong first: one at a time
        keep = [j for j in range(len(ids)) if j != worst]
        rows, ids = rows[keep], [ids[j] for j in keep]
    info.update(span_ids=ids, span_weights=[float(c) for c in coef], dropped=dropped)
    return v, info


def _checked_anchor(
    anchor: torch.Tensor, d_model: int, method: str, anchor_weight: float
) -> torch.Tensor:
    """``anchor`` as a finite, non-zero ``[d_model]`` tensor, or a :class:`ConfigError`."""
    if method != "targeted":
        raise ConfigError(f"anchor is a term of 'targeted', not of {method!r}")
    a = torch.as_tensor(anchor).detach().cpu()
    if a.shape != (d_model,):
        raise ConfigError(f"anchor must have shape [{d_model}] (d_model), got {list(a.shape)}")
    if not bool(torch.isfinite(a).all()) or not a.double().norm() > 0:
        raise ConfigError("anchor must be finite and non-zero")
    if not (anchor_weight >= 0 and np.isfinite(anchor_weight)):
        raise ConfigError(f"anchor_weight must be finite and >= 0, got {anchor_weight}")
    return a.float()


def _penalty_weights(target: Target, d_sae: int, hold_weight: float) -> torch.Tensor:
    """``targeted``'s off-target weights ``w_j`` (float64): 0 on the target's raise and suppress
    features, ``hold_weight`` on its hold features, 1 elsewhere."""
    w = torch.ones(d_sae, dtype=torch.float64)
    w[[*map(int, target.raise_), *map(int, target.suppress)]] = 0.0
    w[[int(i) for i in target.hold]] = hold_weight
    return w


def _solve_targeted(
    model: LinearEffectModel,
    target: Target,
    t: torch.Tensor,
    mu: float | None,
    hold_weight: float,
    min_target_fraction: float,
    z_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
    max_disruption: float | None = None,
    basis: np.ndarray | None = None,
    anchor: torch.Tensor | None = None,
    anchor_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, Any]]:
    # with a basis (orthonormal rows), plan in its coordinates: v = basis.T @ a, |v| = |a|
    full = (lambda a: a) if basis is None else (lambda a: basis.T @ a)
    W = model.W.double().numpy()
    if basis is not None:
        W = basis @ W
    b = model.b.double().numpy()
    weight = _penalty_weights(target, W.shape[1], hold_weight).numpy()
    Ww = W * weight  # W diag(weight)
    Q0 = Ww @ W.T  # quadratic part of sum_j weight_j (vW)_j^2
    lin = W @ t.double().numpy()  # a · (vW)
    cross = Ww @ b  # from sum_j weight_j (vW)_j b_j
    # scale μ (and ν) relative to the problem so the grids mean the same for any model
    lin_norm = float(np.linalg.norm(lin))
    scale = lin_norm / max(float(np.trace(Q0)) / Q0.shape[0], 1e-30)
    if anchor is not None:  # + anchor_weight |lin| (â · v): reward for staying near the anchor
        a_ = anchor.double().numpy()
        a_norm = float(np.linalg.norm(a_))
        if basis is not None:
            a_ = basis @ a_
        if not np.linalg.norm(a_) > 1e-6 * a_norm:  # numerically orthogonal to the span
            raise ConfigError("the anchor has no component in the solver's space (within=)")
        lin = lin + anchor_weight * lin_norm * a_ / np.linalg.norm(a_)
    grid = [mu] if mu is not None else [0.0, *list(np.logspace(-3, 3, 25))]
    evals0, evecs0 = np.linalg.eigh(Q0)

    def path(
        Fq: np.ndarray | None, nn: float
    ) -> tuple[float, torch.Tensor, dict[str, Any], list, float | None]:
        """The μ path at disruption weight ``nn``, its chosen solution and that solution's
        measured ``z`` (with ``z_of``: every candidate is predicted with its measured z)."""
        vs = []
        for m in grid:
            mm = m * scale
            if mm == 0 and nn == 0:
                v = lin / np.linalg.norm(lin)
            elif nn == 0 or Fq is None:
                v = _trust_region(lin - 2 * mm * cross, mm * np.clip(evals0, 0, None), evecs0)
            else:
                ev, evec = np.linalg.eigh(mm * Q0 + nn * Fq)
                v = _trust_region(lin - 2 * mm * cross, np.clip(ev, 0, None), evec)
            vs.append(torch.as_tensor(full(v), dtype=torch.float32))
        V = torch.stack(vs)
        zs = None
        if z_of is None:
            preds = model.predict(V)
        else:  # solve_with_info passes z_of for a DisruptionEffectModel only
            assert isinstance(model, DisruptionEffectModel)
            zs = z_of(V)
            preds = model.predict(V, zs)
        sols = [
            (m, vt, target_stats(p, target), i) for i, (m, vt, p) in enumerate(zip(grid, vs, preds))
        ]
        best_effect = max(s[2]["target_effect"] for s in sols)
        ok = [s for s in sols if s[2]["target_effect"] >= min_target_fraction * best_effect] or sols
        m, v, stats, i = max(ok, key=lambda s: s[2]["target_share"])
        return m, v, stats, sols, None if zs is None else float(zs[i])

    if max_disruption is None:
        m, v, stats, sols, _ = path(None, 0.0)
        return v, {"mu": m, "mu_scale": scale, "predicted": stats,
                   "grid": [(s[0], s[2]) for s in sols]}  # fmt: skip
    if not isinstance(model, DisruptionEffectModel) or model.fisher is None:
        raise ConfigError(
            "max_disruption needs a DisruptionEffectModel with a Fisher matrix "
            "(model.attach_fisher(lm))"
        )
    if not max_disruption > 0:
        raise ConfigError(f"max_disruption must be > 0 nats, got {max_disruption}")
    Fq = model.fisher.double().numpy()
    if basis is not None:
        Fq = basis @ Fq @ basis.T
    nu_scale = lin_norm / max(float(np.trace(Fq)) / Fq.shape[0], 1e-30)
    nus = [0.0, *list(np.logspace(-4, 4, 17))]
    tried: dict[int, dict[str, Any]] = {}
    found: dict[int, tuple] = {}

    def at(i: int) -> float:
        m, v, stats, sols, z_measured = path(Fq, nus[i] * nu_scale)
        z = z_measured if z_measured is not None else float(model.predicted_disruption(v))
        tried[i] = {"nu": nus[i], "mu": m, "disruption": z, **stats}
        found[i] = (m, v, stats, sols, z)
        return z

    # the smallest ν on the grid that meets the budget, by bisection (z falls as ν grows)
    if at(0) <= max_disruption:
        best = 0
    elif at(len(nus) - 1) > max_disruption:
        best = len(nus) - 1  # not met even at the largest ν: reported in the info
    else:
        lo, hi = 0, len(nus) - 1  # z(lo) > budget >= z(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if at(mid) <= max_disruption else (mid, hi)
        best = hi
    m, v, stats, sols, z = found[best]
    nu = nus[best]
    tried_list = [tried[i] for i in sorted(tried)]
    return v, {"mu": m, "mu_scale": scale, "nu": nu, "nu_scale": nu_scale, "predicted": stats,
               "disruption": z, "disruption_measured": z_of is not None,
               "disruption_met": z <= max_disruption,
               "disruption_path": tried_list, "grid": [(s[0], s[2]) for s in sols]}  # fmt: skip


def _ascend_first_token(
    model: FirstTokenEffectModel,
    target: Target,
    t: torch.Tensor,
    v0: torch.Tensor,
    mm: float,
    hold_weight: float,
    prior: Callable[[torch.Tensor], torch.Tensor],
    steps: int,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """From ``v0``, ascend ``targeted``'s objective ``a·e(v) - μ Σ_j w_j e_j(v)²`` on the unit
    sphere with the whole first-token model, ``e(v) = v W_direct + π̃(v) M + b_direct``, ``π(v)``
    measured (and differentiated) on the language model at every step. Each step moves along the
    tangent gradient by an angle that grows on success and halves on failure."""
    w = _penalty_weights(target, model.d_sae, hold_weight).float()
    a = t.float()

    def value_grad(v: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
        x = v.detach().clone().requires_grad_(True)
        e = model.predict(x[None], prior(x[None]))[0]
        J = (a * e).sum() - mm * (w * e * e).sum()
        (g,) = torch.autograd.grad(J, x)
        return float(J.detach()), e.detach(), g

    v = _unit(v0.double()).float()
    J, e, g = value_grad(v)
    start, angle, accepted = J, 0.1, 0
    for _ in range(steps):
        gt = g - (g @ v) * v
        if not gt.norm() > 0:
            break
        cand = _unit((v + angle * gt / gt.norm()).double()).float()
        Jc, ec, gc = value_grad(cand)
        if Jc > J:
            v, J, e, g, accepted = cand, Jc, ec, gc, accepted + 1
            angle = min(2 * angle, 0.5)
        else:
            angle /= 2
    info = {"objective": [start, J], "steps": steps, "accepted": accepted,
            "cos_to_linear": float(v @ _unit(v0.double()).float())}  # fmt: skip
    return v, {"predicted": target_stats(e, target), "first_token": info}


def solve_with_info(
    model: LinearEffectModel,
    target: Target | Mapping[int, float] | Sequence[int] | int,
    method: Method = "targeted",
    *,
    lam: float = 1.0,
    mu: float | None = None,
    hold_weight: float = 10.0,
    min_target_fraction: float = 0.5,
    lm: LanguageModel | None = None,
    max_disruption: float | None = None,
    within: torch.Tensor | None = None,
    sae: Any = None,
    ascent_steps: int = 16,
    anchor: torch.Tensor | None = None,
    anchor_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Like :func:`solve`, and also a dict: ``method``, ``predicted`` stats, and the method's
    parameters (``lam`` for ``"sae_ts"``; ``mu``, ``mu_scale`` and the μ ``grid`` for
    ``"targeted"``; ``first_token``, the ascent's record, with a first-token model and ``lm``;
    ``anchor_cosine``, the solution's cosine to the anchor, with ``anchor``)."""
    tgt = target if isinstance(target, Target) else Target.of(target)
    t = tgt.dense(model.d_sae)
    if anchor is not None:
        anchor = _checked_anchor(anchor, model.d_model, method, anchor_weight)
        if lm is not None and isinstance(model, FirstTokenEffectModel):
            raise ConfigError("anchor= and the first-token ascent (lm= and sae=) do not combine")
    z_of: Callable[[torch.Tensor], torch.Tensor] | None = None
    whole = lm is not None and isinstance(model, FirstTokenEffectModel)
    if lm is not None and not whole:
        if not isinstance(model, DisruptionEffectModel):
            raise ConfigError(
                "lm= is for a DisruptionEffectModel (it measures z(v) on the lm) or a "
                "FirstTokenEffectModel (with sae=: it measures the first-token prior)"
            )
        z_of = functools.partial(model.measure_z, lm)
    if whole and sae is None:
        raise ConfigError("a FirstTokenEffectModel with lm= also needs sae= (the prior's SAE)")
    if whole and within is not None:
        raise ConfigError("within= and the first-token ascent (lm= and sae=) do not combine")
    if ascent_steps < 0:
        raise ConfigError(f"ascent_steps must be >= 0, got {ascent_steps}")

    if method != "pinv" and not (model.W.double() @ t.double()).norm() > 0:
        raise ConfigError(
            f"the effect model predicts no effect on the target features {[*tgt.raise_, *tgt.suppress]}"
            " in any direction (their columns of W are zero: never active in its training data)"
        )
    if max_disruption is not None and method != "targeted":
        raise ConfigError(f"max_disruption is a constraint of 'targeted', not of {method!r}")
    if within is not None and method != "targeted":
        raise ConfigError(f"within is a constraint of 'targeted', not of {method!r}")
    basis = None if within is None else _orthonormal_rows(within, model.d_model)
    info: dict[str, Any]
    if method == "sae_ts":
        v, info = _solve_sae_ts(model, t, lam), {"lam": lam}
    elif method == "pinv":
        v, info = _solve_pinv(model, t), {}
    elif method == "targeted":
        v, info = _solve_targeted(
            model, tgt, t, mu, hold_weight, min_target_fraction, z_of, max_disruption, basis,
            anchor, anchor_weight,
        )  # fmt: skip
        if basis is not None:
            info["within_rank"] = basis.shape[0]
        if anchor is not None:
            info["anchor_weight"] = anchor_weight
            info["anchor_cosine"] = float(_unit(v.double()) @ _unit(anchor.double()))
        if whole:
            assert isinstance(model, FirstTokenEffectModel) and lm is not None
            v, more = _ascend_first_token(
                model, tgt, t, v, info["mu"] * info["mu_scale"], hold_weight,
                model.prior_of(lm, sae), ascent_steps,
            )  # fmt: skip
            info.update(more)
    else:
        raise ConfigError(f"unknown method {method!r}; use 'sae_ts', 'pinv' or 'targeted'")
    if "predicted" in info:  # targeted's: already scored as above (with z when lm is given)
        predicted = info.pop("predicted")
    else:
        predicted = _predicted(model, v, tgt, lm, sae)
    info = {"method": method, "predicted": predicted, **info}
    return v, info


def _predicted(
    model: LinearEffectModel,
    v: torch.Tensor,
    tgt: Target,
    lm: LanguageModel | None,
    sae: Any = None,
) -> dict[str, float]:
    """The predicted stats of ``v``: with ``z(v)`` measured on ``lm`` for a disruption model,
    with the prior measured on ``lm`` and ``sae`` for a first-token model."""
    if lm is not None and isinstance(model, DisruptionEffectModel):
        return target_stats(model.predict_measured(lm, v), tgt)
    if lm is not None and sae is not None and isinstance(model, FirstTokenEffectModel):
        return target_stats(model.predict_measured(lm, sae, v), tgt)
    return predicted_stats(model, v, tgt)


def solve(
    model: LinearEffectModel,
    target: Target | Mapping[int, float] | Sequence[int] | int,
    method: Method = "targeted",
    *,
    lam: float = 1.0,
    mu: float | None = None,
    hold_weight: float = 10.0,
    min_target_fraction: float = 0.5,
    lm: LanguageModel | None = None,
    max_disruption: float | None = None,
    within: torch.Tensor | None = None,
    sae: Any = None,
    ascent_steps: int = 16,
    anchor: torch.Tensor | None = None,
    anchor_weight: float = 1.0,
) -> torch.Tensor:
    """A unit steering direction ``[d_model]`` for ``target`` under the effect model.

    Args:
        model: a fitted :class:`LinearEffectModel`.
        target: a :class:`Target`, or features (see :meth:`Target.of`).
        method: ``"sae_ts"`` (paper rule, ``lam`` = λ), ``"pinv"`` or ``"targeted"``.
        lam: ``"sae_ts"`` only: the weight λ of the ``-normalize(W b)`` term.
        mu: ``"targeted"`` only: the off-target penalty μ (see module docstring);
            ``None`` picks μ from a grid.
        hold_weight: ``"targeted"`` only: the extra weight on features to hold still.
        min_target_fraction: ``"targeted"`` only: when μ is picked from the grid, the
            fraction of the best predicted target effect that a candidate must keep.
        lm: for a :class:`~sae_ts.effect_model.DisruptionEffectModel`, the language model it was
            measured on. ``"targeted"`` then scores its μ candidates with the full prediction
            (the linear part plus the disruption term, ``z`` measured in one forward pass per
            candidate and prompt) instead of the linear part alone.
        max_disruption: ``"targeted"`` only, for a
            :class:`~sae_ts.effect_model.DisruptionEffectModel` with a Fisher matrix: a budget
            (nats) on the solution's next-token KL ``z(v)`` at the model's scale. A penalty
            ``ν vᵀ F v`` joins the off-target penalty, with the smallest ν on a log grid that
            meets the budget (``info["disruption_met"]`` says whether one did). With ``lm``,
            ``z`` is measured (one forward pass per prompt and step); without, it is the
            second-order ``½ s² vᵀ F v``, which on Gemma 3 270M at 0.2 x the norm runs far
            low for solved vectors (0.014 predicted, 0.85 measured): pass ``lm``.
        within: ``"targeted"`` only: rows ``[k, d_model]`` whose span the solution must lie in,
            e.g. :func:`decoder_span`'s few decoder rows, so the solver stays where the effect
            model was fitted instead of exploiting its errors elsewhere.
        sae: with a :class:`~sae_ts.effect_model.FirstTokenEffectModel` and ``lm``, the SAE its
            prior reads. ``"targeted"`` then starts from the linear part's solution and ascends
            the same objective with the whole model (the first-token prior measured and
            differentiated on ``lm``), for ``ascent_steps`` steps; other methods are scored with
            the whole model.
        ascent_steps: the number of ascent steps (each one forward and backward pass per
            prompt of the model's record).
        anchor: ``"targeted"`` only: a direction ``[d_model]`` to stay near, e.g. a CAA vector.
            The objective gains ``anchor_weight · |W a| · (â · v)``, so the solution trades the
            anchor's direction against the target effect and the off-target penalty: the
            effect model corrects a supervised vector instead of replacing it. Not with the
            first-token ascent.
        anchor_weight: the anchor term's weight relative to the target term (1: equal).

    :func:`solve_with_info` also returns the predicted statistics (and μ for ``"targeted"``).
    """
    v, _ = solve_with_info(
        model, target, method, lam=lam, mu=mu, hold_weight=hold_weight,
        min_target_fraction=min_target_fraction, lm=lm, max_disruption=max_disruption,
        within=within, sae=sae, ascent_steps=ascent_steps, anchor=anchor,
        anchor_weight=anchor_weight,
    )  # fmt: skip
    return v


@dataclass
class RefineStep:
    """One closed-loop step: the vector, and its predicted and measured effect statistics."""

    step: int
    vector: torch.Tensor
    predicted: dict[str, float]
    measured: dict[str, float]
    cosine: float  # cosine(predicted effect, measured effect)


def refine(
    model: LinearEffectModel,
    target: Target,
    measure: Callable[[torch.Tensor], torch.Tensor],
    method: Method = "targeted",
    steps: int = 2,
    **solve_kw: Any,
) -> list[RefineStep]:
    """Closed-loop refinement: solve, measure, correct the model's bias locally, solve again.

    ``measure(v)`` returns the measured effect (``[d_sae]``) of unit vector ``v`` at the scale the
    model was fitted for (e.g. ``lambda v: est.measure(v, scale)[0] - baseline``). The correction
    sets ``b' = b + (measured - predicted)`` at the current vector, so the next solve plans with the
    model's error there. Returns every step; pick the best by measured target share.
    """
    local = LinearEffectModel(model.W, model.b.clone(), dict(model.record))
    out: list[RefineStep] = []
    for k in range(steps + 1):
        v = solve(local, target, method, **solve_kw)
        pred = local.predict(v)
        meas = measure(v).float()
        cos = float(torch.nn.functional.cosine_similarity(pred, meas, dim=0))
        out.append(RefineStep(k, v, target_stats(pred, target), target_stats(meas, target), cos))
        local = LinearEffectModel(local.W, local.b + (meas - pred), local.record)
    return out

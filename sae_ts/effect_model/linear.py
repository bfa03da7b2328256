"""The linear effect model ``effect ≈ v @ W + b`` and its fits: closed-form CV ridge, ridge with a
strength per feature, and the SAE-TS paper's Adam recipe.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..artifacts import load_artifact, save_artifact
from ..effects import EffectConfig, EffectDataset
from ..errors import ConfigError

__all__ = [
    "FitReport",
    "LinearEffectModel",
    "UnderdeterminedFitWarning",
    "effect_metrics",
    "fit_adam",
    "fit_ridge",
    "fit_ridge_per_feature",
]


@dataclass
class LinearEffectModel:
    """Predicts the SAE-feature effect of a unit steering direction: ``v @ W + b``."""

    W: torch.Tensor  # [d_model, d_sae]
    b: torch.Tensor  # [d_sae]
    record: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.W.ndim != 2 or self.b.ndim != 1 or self.W.shape[1] != self.b.shape[0]:
            raise ValueError(
                f"W must be [d_model, d_sae] and b [d_sae]; got {tuple(self.W.shape)}, {tuple(self.b.shape)}"
            )
        if not (torch.isfinite(self.W).all() and torch.isfinite(self.b).all()):
            raise ValueError("effect model contains NaN or inf")

    @property
    def d_model(self) -> int:
        return int(self.W.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W.shape[1])

    def _check_input(self, v: torch.Tensor) -> None:
        if v.shape[-1] != self.d_model:
            raise ValueError(
                f"input has d_model={v.shape[-1]}, effect model expects {self.d_model}"
            )

    def predict(self, v: torch.Tensor) -> torch.Tensor:
        """Predicted effect of ``v`` (``[d_model]`` or ``[n, d_model]``)."""
        self._check_input(v)
        return v.to(self.W) @ self.W + self.b

    def save(self, path: str | Path) -> Path:
        return save_artifact(
            path, {"W": self.W, "b": self.b}, {"kind": "linear_effect_model", **self.record}
        )

    @classmethod
    def load(cls, path: str | Path) -> LinearEffectModel:
        t, rec = load_artifact(path, kind="linear_effect_model", tensors=("W", "b"))
        return cls(t["W"], t["b"], rec)


@dataclass
class FitReport:
    """Held-out fit of an effect model."""

    method: str
    r2: float  # variance-weighted R² on the held-out samples
    cosine: float  # mean cosine(predicted, measured) over held-out samples
    n_train: int
    n_heldout: int
    seconds: float
    alpha: float | None = None
    cv: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        a = f", alpha={self.alpha:.3g}" if self.alpha is not None else ""
        return (
            f"{self.method}: held-out R²={self.r2:.3f}, cosine={self.cosine:.3f} "
            f"(train {self.n_train}, held out {self.n_heldout}{a}, {self.seconds:.2f}s)"
        )


def effect_metrics(pred: torch.Tensor, true: torch.Tensor) -> tuple[float, float]:
    """(variance-weighted R², mean per-sample cosine) of ``pred`` against ``true``."""
    if pred.shape != true.shape:
        raise ValueError(f"shapes differ: {tuple(pred.shape)} vs {tuple(true.shape)}")
    pred, true = pred.double(), true.double()
    sse = ((pred - true) ** 2).sum()
    sst = ((true - true.mean(0)) ** 2).sum()
    r2 = float(1 - sse / sst) if sst > 0 else float("nan")
    cos = torch.nn.functional.cosine_similarity(pred, true, dim=-1, eps=1e-12)
    return r2, float(cos.mean())


def _split(
    ds: EffectDataset, holdout: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    n = len(ds)
    if not 0 < holdout < n - 1:
        raise ValueError(f"holdout={holdout} must leave at least 2 of {n} samples to train on")
    X, Y = ds.inputs.double(), ds.effects.double()
    if not (torch.isfinite(X).all() and torch.isfinite(Y).all()):
        raise ValueError("effect dataset contains NaN or inf")
    return X[:-holdout], Y[:-holdout], X[-holdout:], Y[-holdout:]


def _ridge_path(
    X: torch.Tensor, Y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD pieces so that W(alpha) = V diag(s/(s²+alpha)) Uᵀ Yc; returns (V, s, UtY, xm, ym)."""
    xm, ym = X.mean(0), Y.mean(0)
    U, s, Vh = torch.linalg.svd(X - xm, full_matrices=False)
    return Vh.T, s, U.T @ (Y - ym), xm, ym


def _ridge_weights(
    V: torch.Tensor, s: torch.Tensor, UtY: torch.Tensor, alpha: float
) -> torch.Tensor:
    return V @ ((s / (s**2 + alpha))[:, None] * UtY)


def _ridge_at(X: torch.Tensor, Y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge weights and the unpenalised intercept at one strength: ``(W, b)``, float64."""
    V, s, UtY, xm, ym = _ridge_path(X, Y)
    W = _ridge_weights(V, s, UtY, alpha)
    return W, ym - xm @ W


def _ridge_grid(Xtr: torch.Tensor, alphas: torch.Tensor | None) -> torch.Tensor:
    """Warn on an underdetermined fit; the ridge strengths to try (default 1e-4 ... 1e3)."""
    _warn_if_underdetermined(Xtr.shape[0], Xtr.shape[1])
    return torch.logspace(-4, 3, 15, dtype=torch.float64) if alphas is None else alphas


def fit_ridge(
    ds: EffectDataset,
    holdout: int = 100,
    alphas: torch.Tensor | None = None,
    folds: int = 5,
    seed: int = 0,
) -> tuple[LinearEffectModel, FitReport]:
    """Closed-form ridge fit; the ridge strength is chosen by ``folds``-fold CV on the train part."""
    t0 = time.perf_counter()
    Xtr, Ytr, Xte, Yte = _split(ds, holdout)
    alphas = _ridge_grid(Xtr, alphas)
    n = Xtr.shape[0]
    folds = max(2, min(folds, n))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    scores = torch.zeros(len(alphas), dtype=torch.float64)
    for k in range(folds):
        val = perm[k::folds]
        tr = torch.ones(n, dtype=torch.bool)
        tr[val] = False
        V, s, UtY, xm, ym = _ridge_path(Xtr[tr], Ytr[tr])
        for j, a in enumerate(alphas.tolist()):
            W = _ridge_weights(V, s, UtY, a)
            pred = (Xtr[val] - xm) @ W + ym
            scores[j] += effect_metrics(pred, Ytr[val])[0] / folds
    best = int(torch.nan_to_num(scores, nan=-1e9).argmax())
    alpha = float(alphas[best])
    W, b = _ridge_at(Xtr, Ytr, alpha)
    r2, cos = effect_metrics(Xte @ W + b, Yte)
    report = FitReport(
        "ridge", r2, cos, n, holdout, time.perf_counter() - t0, alpha,
        {f"{a:.3g}": float(sc) for a, sc in zip(alphas.tolist(), scores.tolist())},
    )  # fmt: skip
    model = LinearEffectModel(W.float(), b.float(), _record(ds, report))
    return model, report


def fit_ridge_per_feature(
    ds: EffectDataset,
    holdout: int = 100,
    alphas: torch.Tensor | None = None,
    seed: int = 0,
) -> tuple[LinearEffectModel, FitReport]:
    """Closed-form ridge with one ridge strength per SAE feature, each chosen by exact
    leave-one-out error on the train part (issue #26).

    Features differ in how much of their effect is signal: a rare latent's column of ``W`` is
    mostly noise and wants strong shrinkage, a common one's little. With the SVD ``Xc = U S Vᵀ``
    of the centred inputs, the leave-one-out residual of sample ``i`` is ``r_i / (1 - h_ii)``
    (``h`` the diagonal of the hat matrix, ``1/n`` for the intercept included), so every
    feature's LOO error at every strength costs one matrix product per strength. ``seed`` is
    unused (no random split) and kept for a uniform signature.
    """
    del seed
    t0 = time.perf_counter()
    Xtr, Ytr, Xte, Yte = _split(ds, holdout)
    alphas = _ridge_grid(Xtr, alphas)
    n = Xtr.shape[0]
    V, s, UtY, xm, ym = _ridge_path(Xtr, Ytr)
    U = (Xtr - xm) @ V / s.clamp_min(1e-12)  # [n, r]
    Yc = Ytr - ym
    U2 = U**2
    loo = torch.empty(len(alphas), Ytr.shape[1], dtype=torch.float64)
    for j, a in enumerate(alphas.tolist()):
        shrink = s**2 / (s**2 + a)
        h = 1.0 / n + U2 @ shrink  # [n]
        resid = Yc - U @ (shrink[:, None] * UtY)
        loo[j] = ((resid / (1.0 - h).clamp_min(1e-6)[:, None]) ** 2).sum(0)
    best = loo.argmin(0)  # [d_sae]
    W = torch.empty(Xtr.shape[1], Ytr.shape[1], dtype=torch.float64)
    for j in best.unique().tolist():
        cols = (best == j).nonzero().squeeze(1)
        W[:, cols] = _ridge_weights(V, s, UtY[:, cols], float(alphas[j]))
    b = ym - xm @ W
    r2, cos = effect_metrics(Xte @ W + b, Yte)
    counts = torch.bincount(best, minlength=len(alphas)).tolist()
    report = FitReport(
        "ridge_per_feature", r2, cos, n, holdout, time.perf_counter() - t0,
        float(alphas[int(torch.tensor(counts).argmax())]),
        {f"{a:.3g}": float(c) for a, c in zip(alphas.tolist(), counts)},
    )  # fmt: skip
    return LinearEffectModel(W.float(), b.float(), _record(ds, report)), report


def fit_adam(
    ds: EffectDataset,
    holdout: int = 100,
    lr: float = 2e-4,
    epochs: int = 15,
    batch_size: int = 64,
    seed: int = 0,
) -> tuple[LinearEffectModel, FitReport]:
    """The paper's fit: linear layer with bias, MSE, Adam, cosine schedule (for parity)."""
    t0 = time.perf_counter()
    Xtr, Ytr, Xte, Yte = _split(ds, holdout)
    _warn_if_underdetermined(Xtr.shape[0], Xtr.shape[1])
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layer = torch.nn.Linear(Xtr.shape[1], Ytr.shape[1])
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    steps = epochs * max(1, -(-Xtr.shape[0] // batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    Xf, Yf = Xtr.float(), Ytr.float()
    with torch.enable_grad():
        for _ in range(epochs):
            perm = torch.randperm(Xf.shape[0], generator=g)
            for i in range(0, Xf.shape[0], batch_size):
                idx = perm[i : i + batch_size]
                loss = torch.nn.functional.mse_loss(layer(Xf[idx]), Yf[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    W, b = layer.weight.detach().T.contiguous(), layer.bias.detach().clone()
    r2, cos = effect_metrics(Xte.float() @ W + b, Yte.float())
    report = FitReport("adam", r2, cos, Xtr.shape[0], holdout, time.perf_counter() - t0)
    return LinearEffectModel(W, b, _record(ds, report)), report


def _record(ds: EffectDataset, report: FitReport) -> dict[str, Any]:
    keep = ("model", "steer_hook", "sae_hook", "d_sae", "seed", "config", "sae")
    return {
        **{k: ds.record[k] for k in keep if k in ds.record},
        "fit": {k: v for k, v in vars(report).items() if k != "cv"},
    }


def _dataset_spec(ds: EffectDataset) -> dict[str, Any]:
    """Where a campaign's ``z`` is measured: its steering hook, its one scale, its prompts."""
    if not torch.allclose(ds.scales, ds.scales[0].expand_as(ds.scales)):
        raise ConfigError("the disruption term needs a campaign at one fixed scale")
    if not ds.record.get("steer_hook"):
        raise ConfigError("the effect dataset's record names no steer_hook to measure z at")
    prompts = ds.record.get("config", {}).get("prompts") or EffectConfig().prompts
    return {
        "measure": "next_token_kl",
        "hook": ds.record["steer_hook"],
        "scale": float(ds.scales[0]),
        "prompts": [p for p in prompts if p],
    }


class UnderdeterminedFitWarning(UserWarning):
    """An effect model fitted on no more vectors than ``d_model``: unseen directions fall to b."""


def _warn_if_underdetermined(n_train: int, d_model: int) -> None:
    if n_train <= d_model:
        import warnings

        warnings.warn(
            f"effect model fitted on {n_train} vectors in d_model={d_model}: W has rank < "
            f"{d_model}, so directions outside the span of the training vectors are predicted as b. "
            f"Estimate at least ~{8 * d_model} vectors (8 x d_model) for a model that generalises.",
            UnderdeterminedFitWarning,
            stacklevel=3,
        )

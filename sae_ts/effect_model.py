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
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

import torch

from .artifacts import artifact_paths, load_artifact, save_artifact
from .disruption import disruption_features, next_token_fisher, next_token_kl
from .effects import EffectConfig, EffectDataset
from .errors import ConfigError, MissingFileError
from .first_token import FirstTokenPrior, first_token_prior
from .models import embedded_spec
from .types import LanguageModel

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

DEFAULT_EFFECT_MODEL: Path = (
    Path(__file__).resolve().parent / "assets" / "smollm2-135m-res12-effects"
)
EMBEDDED_EFFECT_MODELS: dict[str, Path] = {
    "smollm2-135m": DEFAULT_EFFECT_MODEL,
    "gemma-3-270m": DEFAULT_EFFECT_MODEL.with_name("gemma-3-270m-res12-effects"),
}
"""The effect model shipped for each embedded model's SAE (by model key)."""


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


DISRUPTION_KIND = "disruption_effect_model"


@dataclass
class DisruptionEffectModel(LinearEffectModel):
    """``effect ≈ v @ W + φ(z(v)) @ M + b``: a linear effect model plus a measured disruption term.

    ``W`` and ``b`` are the linear part at the training-mean disruption, which the solvers use.
    ``record["disruption"]`` holds what :meth:`predict_measured` needs to measure ``z``: the
    steering hook, the scale and the prompts.
    """

    M: torch.Tensor = field(default_factory=lambda: torch.zeros(2, 0))  # [2, d_sae]
    z_mean: float = 0.0
    z_std: float = 1.0
    fisher: torch.Tensor | None = None  # [d_model, d_model]: z(v) ≈ ½ scale² vᵀ F v

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.M.shape != (2, self.d_sae):
            raise ValueError(f"M must be [2, d_sae={self.d_sae}], got {tuple(self.M.shape)}")
        if not torch.isfinite(self.M).all() or not self.z_std > 0:
            raise ValueError("disruption term contains NaN or inf, or a non-positive z_std")
        if self.fisher is not None and (
            self.fisher.shape != (self.d_model, self.d_model)
            or not torch.isfinite(self.fisher).all()
        ):
            raise ValueError(f"fisher must be a finite [d_model={self.d_model}]² matrix")

    def attach_fisher(self, model: LanguageModel, top: int = 128, progress: bool = True) -> None:
        """Compute :func:`~sae_ts.disruption.next_token_fisher` on ``model`` at the recorded hook
        and prompts, and keep it (it is saved with the model), so that solvers can bound ``z(v)``
        without measuring it (``solve(..., max_disruption=...)``)."""
        d = self.disruption_spec()
        self.fisher = next_token_fisher(model, d["hook"], d["prompts"], top, progress).float()
        self.record["fisher"] = {"top": top, "measure": "next_token_fisher"}

    def predicted_disruption(self, v: torch.Tensor) -> torch.Tensor:
        """The second-order prediction of ``z(v)`` at the recorded scale, ``½ s² vᵀ F v`` (it
        needs :meth:`attach_fisher`). On Gemma's held-out directions it ranks them as the
        measured ``z`` does (Spearman 0.92) but runs about 2x low."""
        if self.fisher is None:
            raise ConfigError("this effect model has no Fisher matrix: call attach_fisher(lm)")
        V = (v if v.ndim == 2 else v[None]).double()
        s = float(self.disruption_spec()["scale"])
        q = 0.5 * s**2 * ((V @ self.fisher.double()) * V).sum(-1)
        return q if v.ndim == 2 else q[0]

    def disruption_spec(self) -> dict[str, Any]:
        """Where and how ``z`` is measured: ``hook``, ``scale`` and ``prompts``."""
        d = self.record.get("disruption")
        if not d:
            raise ConfigError("the record names no disruption measure (hook, scale, prompts)")
        return dict(d)

    def predict(self, v: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted effect of ``v``. With ``z`` (the :func:`next_token_kl` of each row, ``[n]``
        or a scalar for one vector) the disruption term is added; without, the linear part."""
        lin = super().predict(v)
        if z is None:
            return lin
        z = torch.as_tensor(z, dtype=torch.float64).reshape(-1)
        phi = disruption_features(z, self.z_mean, self.z_std).to(self.M)
        if v.ndim == 1:
            if len(z) != 1:
                raise ValueError(f"one vector needs one z, got {len(z)}")
            return lin + (phi @ self.M)[0]
        if len(z) != v.shape[0]:
            raise ValueError(f"{v.shape[0]} vectors but {len(z)} values of z")
        return lin + phi @ self.M

    def measure_z(
        self, model: LanguageModel, V: torch.Tensor, progress: bool = False
    ) -> torch.Tensor:
        """``z`` of each row of ``V`` (``[n, d_model]``) on ``model``, at the recorded hook, scale
        and prompts: :func:`~sae_ts.disruption.next_token_kl`. Returns ``[n]``."""
        d = self.disruption_spec()
        return next_token_kl(
            model, d["hook"], V.to(model.cfg.device), d["scale"], d["prompts"], progress=progress
        )

    def predict_measured(
        self, model: LanguageModel, v: torch.Tensor, progress: bool = False
    ) -> torch.Tensor:
        """Measure ``z(v)`` on ``model`` (one forward pass per prompt) and predict with it."""
        V = (v if v.ndim == 2 else v[None]).to(self.W)
        out = self.predict(V, self.measure_z(model, V, progress))
        return out if v.ndim == 2 else out[0]

    def save(self, path: str | Path) -> Path:
        tensors = {"W": self.W, "b": self.b, "M": self.M}
        if self.fisher is not None:
            tensors["fisher"] = self.fisher
        stats = {"z_mean": self.z_mean, "z_std": self.z_std}
        return save_artifact(
            path, tensors, {"kind": DISRUPTION_KIND, **self.record, "z_stats": stats}
        )

    @classmethod
    def load(cls, path: str | Path) -> DisruptionEffectModel:
        t, rec = load_artifact(
            path, kind=DISRUPTION_KIND, tensors=("W", "b", "M"), fields=("z_stats", "disruption")
        )
        stats = rec.pop("z_stats")
        fisher = t["fisher"].float() if "fisher" in t else None
        return cls(t["W"].float(), t["b"].float(), rec, t["M"].float(),
                   float(stats["z_mean"]), float(stats["z_std"]), fisher)  # fmt: skip


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


def dataset_disruption(
    model: LanguageModel, ds: EffectDataset, progress: bool = True
) -> torch.Tensor:
    """:func:`~sae_ts.disruption.next_token_kl` of every vector of ``ds`` on ``model``, at the
    campaign's hook, scale and prompts: the ``disruption`` that ``ridge_disruption`` fits on."""
    d = _dataset_spec(ds)
    return next_token_kl(
        model,
        d["hook"],
        ds.inputs.to(model.cfg.device),
        d["scale"],
        d["prompts"],
        progress=progress,
    )


def fit_ridge_disruption(
    ds: EffectDataset,
    z: torch.Tensor,
    holdout: int = 100,
    seed: int = 0,
) -> tuple[DisruptionEffectModel, FitReport]:
    """Ridge on ``[v, φ(z)]``: ``z`` (``[n]``) is :func:`next_token_kl` of each vector of ``ds``
    at the campaign's scale. ``φ`` is standardised on the training part (all but the last
    ``holdout``), so the held-out vectors play no part in the fit."""
    if z.shape != (len(ds),):
        raise ConfigError(f"z must be [{len(ds)}] (one per vector), got {tuple(z.shape)}")
    if not torch.isfinite(z).all():
        raise ConfigError("z contains NaN or inf")
    spec = _dataset_spec(ds)
    z_tr = z[: len(ds) - holdout].double()
    mean, std = float(z_tr.mean()), float(z_tr.std())
    if not std > 0:
        raise ConfigError("z is constant on the training vectors: there is no disruption to fit")
    phi = disruption_features(z, mean, std).to(ds.inputs.dtype)
    aug = dataclasses.replace(ds, inputs=torch.cat([ds.inputs, phi], 1))
    lin, report = fit_ridge(aug, holdout=holdout, seed=seed)
    d = ds.inputs.shape[1]
    report.method = "ridge_disruption"
    record: dict[str, Any] = dict(lin.record)
    record["fit"] = {**record.get("fit", {}), "method": "ridge_disruption"}
    record["disruption"] = spec
    model = DisruptionEffectModel(lin.W[:d], lin.b, record, lin.W[d:], mean, std)
    return model, report


FIRST_TOKEN_KIND = "first_token_effect_model"


@dataclass
class FirstTokenEffectModel(LinearEffectModel):
    """``effect ≈ v @ W_direct + ((π(v) - μ) @ U) @ M + b_direct``: ridge on the direction and
    the first-token prior's ``k`` leading components (``U``, ``[d_sae, k]``, scaled).

    ``W`` / ``b``: the linearisation over the training vectors (what the solvers plan with, and
    what :meth:`predict` returns without a prior). ``record["first_token"]`` holds what
    :meth:`predict_measured` needs: hooks, scale, prompts and sampling settings.
    """

    W_direct: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0))
    b_direct: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    basis: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0))  # [d_sae, k]
    mean: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # [d_sae]
    M: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0))  # [k, d_sae]

    def __post_init__(self) -> None:
        super().__post_init__()
        d, s = self.W.shape
        k = self.basis.shape[1] if self.basis.ndim == 2 else -1
        shapes = {
            "W": (self.W, (d, s)), "b": (self.b, (s,)), "W_direct": (self.W_direct, (d, s)),
            "b_direct": (self.b_direct, (s,)), "basis": (self.basis, (s, k)),
            "mean": (self.mean, (s,)), "M": (self.M, (k, s)),
        }  # fmt: skip
        for name, (t, shape) in shapes.items():
            if tuple(t.shape) != shape or d == 0 or k < 1:
                raise ValueError(f"{name} must be {shape}, got {tuple(t.shape)}")
            if not torch.isfinite(t).all():
                raise ValueError(f"effect model's {name} contains NaN or inf")

    def predict(self, v: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted effect of ``v`` (``[d_model]`` or ``[n, d_model]``); with ``prior`` (its
        :func:`first_token_prior`, ``[d_sae]`` or ``[n, d_sae]``) the whole model, without it
        the linearisation ``v @ W + b``."""
        if prior is None:
            return super().predict(v)
        self._check_input(v)
        if prior.shape[-1] != self.d_sae or prior.shape[:-1] != v.shape[:-1]:
            raise ValueError(
                f"prior must be [..., d_sae={self.d_sae}] with one row per vector, got "
                f"{tuple(prior.shape)} for vectors {tuple(v.shape)}"
            )
        z = (prior.to(self.W) - self.mean) @ self.basis
        return v.to(self.W) @ self.W_direct + z @ self.M + self.b_direct

    def prior_spec(self) -> dict[str, Any]:
        """Where and how the prior is measured: hooks, scale, prompts, sampling."""
        d = self.record.get("first_token")
        if not d:
            raise ConfigError("the record names no first-token prior (hook, scale, prompts)")
        return dict(d)

    def prior_of(self, model: LanguageModel, sae: Any) -> FirstTokenPrior:
        """The prior at the recorded settings, as a callable (differentiable in ``v``)."""
        d = self.prior_spec()
        return FirstTokenPrior(
            model, sae, d["hook"], d["scale"], d["prompts"], sae_hook=d.get("sae_hook"),
            temperature=d["temperature"], top_k=d["top_k"], top_p=d["top_p"],
        )  # fmt: skip

    def measure_prior(
        self, model: LanguageModel, sae: Any, V: torch.Tensor, progress: bool = False
    ) -> torch.Tensor:
        """:func:`first_token_prior` of each row of ``V`` at the recorded settings."""
        return _measured_prior(model, sae, self.prior_spec(), V, progress)

    def predict_measured(
        self, model: LanguageModel, sae: Any, v: torch.Tensor, progress: bool = False
    ) -> torch.Tensor:
        """Measure the prior of ``v`` on ``model`` and ``sae`` and predict with it."""
        V = v if v.ndim == 2 else v[None]
        out = self.predict(V, self.measure_prior(model, sae, V.float(), progress))
        return out if v.ndim == 2 else out[0]

    def save(self, path: str | Path) -> Path:
        tensors = {"W": self.W, "b": self.b, "W_direct": self.W_direct, "b_direct": self.b_direct,
                   "basis": self.basis, "mean": self.mean, "M": self.M}  # fmt: skip
        return save_artifact(path, tensors, {"kind": FIRST_TOKEN_KIND, **self.record})

    @classmethod
    def load(cls, path: str | Path) -> FirstTokenEffectModel:
        names = ("W", "b", "W_direct", "b_direct", "basis", "mean", "M")
        t, rec = load_artifact(path, kind=FIRST_TOKEN_KIND, tensors=names, fields=("first_token",))
        f = {n: t[n].float() for n in names}
        return cls(
            f["W"], f["b"], rec, W_direct=f["W_direct"], b_direct=f["b_direct"],
            basis=f["basis"], mean=f["mean"], M=f["M"],
        )  # fmt: skip


def prior_spec(ds: EffectDataset) -> dict[str, Any]:
    """The first-token prior's settings for a campaign: its hooks, scale, prompts, temperature
    and top-k. ``top_p`` is ``None``: the prior uses the untruncated top-k distribution (see
    the module's docstring for why)."""
    d = _dataset_spec(ds)
    cfg = {**dataclasses.asdict(EffectConfig()), **(ds.record.get("config") or {})}
    return {
        "measure": "first_token_prior", "hook": d["hook"],
        "sae_hook": ds.record.get("sae_hook") or d["hook"], "scale": d["scale"],
        "prompts": d["prompts"], "temperature": float(cfg["temperature"]),
        "top_k": cfg.get("top_k"), "top_p": None,
    }  # fmt: skip


def dataset_prior(
    model: LanguageModel, sae: Any, ds: EffectDataset, progress: bool = True
) -> torch.Tensor:
    """:func:`first_token_prior` of every vector of an effect dataset, at its campaign's hooks,
    scale, prompts and sampling settings: the ``prior`` that ``ridge_first_token`` fits on."""
    return _measured_prior(model, sae, prior_spec(ds), ds.inputs.float(), progress)


def _measured_prior(
    model: LanguageModel, sae: Any, spec: dict[str, Any], V: torch.Tensor, progress: bool
) -> torch.Tensor:
    """:func:`first_token_prior` of the rows of ``V`` at the settings of :func:`prior_spec`."""
    return first_token_prior(
        model, sae, spec["hook"], V, spec["scale"], spec["prompts"], sae_hook=spec.get("sae_hook"),
        temperature=spec["temperature"], top_k=spec["top_k"], top_p=spec["top_p"],
        progress=progress,
    )  # fmt: skip


def fit_ridge_first_token(
    ds: EffectDataset, prior: torch.Tensor, holdout: int = 100, seed: int = 0, k: int = 128
) -> tuple[FirstTokenEffectModel, FitReport]:
    """Ridge on ``[v, π̃(v)]`` (:mod:`sae_ts.first_token`): ``prior`` (``[n, d_sae]``) is
    :func:`dataset_prior` of ``ds``. The principal components, their scale and the
    linearisation use the training part only (all but the last ``holdout`` vectors)."""
    n = len(ds)
    if prior.shape != (n, ds.effects.shape[1]):
        raise ConfigError(
            f"prior must be [{n}, d_sae={ds.effects.shape[1]}] (one row per vector), "
            f"got {tuple(prior.shape)}"
        )
    if not torch.isfinite(prior).all():
        raise ConfigError("prior contains NaN or inf")
    n_fit = n - holdout
    k = min(k, n_fit - 1, prior.shape[1])
    if k < 1:
        raise ConfigError(f"too few training vectors ({n_fit}) for a first-token prior")
    P = prior.double()
    mean = P[:n_fit].mean(0)
    torch.manual_seed(seed)  # pca_lowrank's random projection
    _, _, U = torch.pca_lowrank(P[:n_fit] - mean, q=k, center=False, niter=4)
    Z = (P - mean) @ U
    s = float(ds.inputs[:n_fit].double().norm(dim=1).mean() / Z[:n_fit].norm(dim=1).mean())
    if not s > 0 or not torch.isfinite(torch.tensor(s)):
        raise ConfigError("the first-token prior is zero on every training vector")
    basis = U * s
    Z = Z * s
    d = ds.inputs.shape[1]
    aug = dataclasses.replace(ds, inputs=torch.cat([ds.inputs, Z.to(ds.inputs.dtype)], 1))
    lin, report = fit_ridge(aug, holdout=holdout, seed=seed)
    W_direct, M = lin.W[:d].double(), lin.W[d:].double()
    # The linearisation over the training vectors (the prior's components regressed on v by
    # ridge at the joint fit's strength, Z ≈ v A + c) is exactly plain ridge at that strength:
    # the joint normal equations give W_direct = W_ridge - A M. Computed as plain ridge, so that
    # it is bit for bit the ridge model a campaign would ship.
    Xtr, Ytr, _, _ = _split(ds, holdout)
    W, b = _ridge_at(Xtr, Ytr, float(report.alpha or 0.0))
    report.method = "ridge_first_token"
    record: dict[str, Any] = dict(lin.record)
    record["fit"] = {**record.get("fit", {}), "method": "ridge_first_token", "k": k}
    record["first_token"] = prior_spec(ds)
    model = FirstTokenEffectModel(
        W.float(), b.float(), record, W_direct=W_direct.float(), b_direct=lin.b.float(),
        basis=basis.float(), mean=mean.float(), M=M.float(),
    )  # fmt: skip
    return model, report


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

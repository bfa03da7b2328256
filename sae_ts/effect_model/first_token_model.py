"""The effect model with the measured first-token prior of :mod:`sae_ts.first_token`: ridge on
``[v, PCA(π(v))]`` (fit method ``ridge_first_token``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..artifacts import load_artifact, save_artifact
from ..effects import EffectConfig, EffectDataset
from ..errors import ConfigError
from ..first_token import FirstTokenPrior, first_token_prior
from ..types import LanguageModel
from .linear import FitReport, LinearEffectModel, _dataset_spec, _ridge_at, _split, fit_ridge

__all__ = [
    "FIRST_TOKEN_KIND",
    "FirstTokenEffectModel",
    "dataset_prior",
    "fit_ridge_first_token",
    "prior_spec",
]


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
    :mod:`sae_ts.first_token` for why)."""
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

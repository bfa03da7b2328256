"""The first-token prior of the effect model (issue #26): ``effect ≈ v @ W + π̃(v) @ M + b``.

A steering vector changes the SAE features of generated text only through the tokens it makes
the model sample (the SAE reads the hooked residual before the vector is added, so a position's
features depend on its tokens alone). The first of those tokens costs one forward pass to
predict, with no sampling:

* ``q_v,p``: the steered next-token distribution on effect prompt ``p``, with ``scale * v``
  added at the steering hook: the campaign's temperature and top-k applied, but not its top-p cut
  (:func:`prior_spec`). At SmolLM2's top-p of 0.3 the cut leaves one or two tokens, and the
  graded shift of the untruncated distribution predicts more: cross-validated R² 0.314 against
  0.283 with the cut, held-out R² 0.472 against 0.438 (``docs/results/effects.md``);
* ``G_p[t]``: the SAE features that token ``t`` evokes at its own position after prompt ``p``
  (unsteered; computed once per (prompt, token) pair and cached);
* the prior ``π(v) = mean_p Σ_t (q_v,p(t) - q_0,p(t)) G_p[t]``, ``[d_sae]`` per vector.

:func:`fit_ridge_first_token` fits ridge on ``[v, π̃(v)]``, with ``π̃`` the prior projected on
its ``k`` leading principal components (fitted on the training vectors, scaled to the inputs'
norm). On SmolLM2's campaign it lifts held-out R² from 0.348 to about 0.47 at 4,608 vectors
(``benchmarks/effect_model_budget.py --methods ridge,ridge_first_token``; see
``docs/results/effects.md``).

:class:`FirstTokenEffectModel`'s ``W`` and ``b`` are the model's *linearisation* over the
training vectors (``π̃`` regressed on ``v`` by ridge at the fit's strength), which equals plain
ridge on ``v`` at that strength; the solvers plan with it.
:meth:`FirstTokenEffectModel.predict` with a measured prior, or
:meth:`FirstTokenEffectModel.predict_measured`, uses the whole model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ._util import hook_layer, to_tokens
from .artifacts import load_artifact, save_artifact
from .backends import is_bridge
from .disruption import _checked, _last_logits
from .effect_model import FitReport, LinearEffectModel, _dataset_spec, fit_ridge
from .effects import EffectConfig, EffectDataset
from .errors import ConfigError
from .generation import _candidates
from .steering import steer
from .types import LanguageModel

__all__ = [
    "FIRST_TOKEN_KIND",
    "FirstTokenEffectModel",
    "dataset_prior",
    "first_token_prior",
    "fit_ridge_first_token",
    "prior_spec",
]

FIRST_TOKEN_KIND = "first_token_effect_model"


def _sampling_probs(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidate ids ``[B, k]`` and their sampling probabilities (the same truncation as
    :func:`sae_ts.generation.sample`; ``temperature == 0`` puts all mass on the argmax)."""
    if temperature == 0.0:
        return logits.argmax(-1, keepdim=True), torch.ones(logits.shape[0], 1)
    vals, idx, keep = _candidates(logits, temperature, top_k, top_p)
    probs = vals.softmax(-1)
    if keep is not None:
        probs = probs * keep
        probs = probs / probs.sum(-1, keepdim=True)
    return idx, probs


class _TokenFeatures:
    """``G_p[t]``: SAE features at token ``t``'s position after prompt ``p``, computed on demand."""

    def __init__(self, model: LanguageModel, sae: Any, hook: str, toks: list[torch.Tensor]):
        self.model, self.sae, self.hook, self.toks = model, sae, hook, toks
        self.cache: list[dict[int, torch.Tensor]] = [{} for _ in toks]

    def table(self, p: int, ids: Sequence[int]) -> torch.Tensor:
        """``[len(ids), d_sae]`` for prompt ``p``."""
        missing = [t for t in dict.fromkeys(ids) if t not in self.cache[p]]
        for i in range(0, len(missing), 256):
            chunk = missing[i : i + 256]
            base = self.toks[p]
            x = torch.cat(
                [base.expand(len(chunk), -1), torch.tensor(chunk, device=base.device)[:, None]], 1
            )
            kw: dict[str, Any] = {} if is_bridge(self.model) else {
                "stop_at_layer": hook_layer(self.hook) + 1
            }  # fmt: skip
            with torch.no_grad():
                _, cache = self.model.run_with_cache(x, names_filter=self.hook, **kw)
                a = cache[self.hook][:, -1]
                f = self.sae.encode(a.to(self.sae.W_enc.dtype)).float().cpu()
            for t, row in zip(chunk, f):
                self.cache[p][t] = row
        return torch.stack([self.cache[p][t] for t in ids])


def first_token_prior(
    model: LanguageModel,
    sae: Any,
    hook: str,
    vectors: torch.Tensor,
    scale: float,
    prompts: Sequence[str],
    *,
    sae_hook: str | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> torch.Tensor:
    """The first-token prior ``π(v)`` of each row of ``vectors`` (``[n, d_model]``, unit rows):
    the change in the SAE features of the first sampled token, averaged over ``prompts``, when
    ``scale * v`` is added at ``hook``. Returns ``[n, d_sae]`` (float32, on the CPU).

    ``sae_hook`` (default ``hook``) is where the SAE reads; it should be at or before the
    steering hook, as in the effect campaigns, for the token features to be unsteered. Empty
    prompts are dropped, as in :func:`sae_ts.disruption.next_token_kl`. ``temperature``,
    ``top_k`` and ``top_p`` shape the next-token distribution as in
    :func:`sae_ts.generation.sample`; :func:`prior_spec` takes a campaign's temperature and
    top-k and leaves ``top_p`` out.
    """
    prompts = _checked(model, vectors, prompts, "first_token_prior")
    if not scale > 0 or not torch.isfinite(torch.tensor(float(scale))):
        raise ConfigError(f"scale must be a positive finite number, got {scale}")
    toks = [to_tokens(model, [p]) for p in prompts]
    feats = _TokenFeatures(model, sae, sae_hook or hook, toks)
    d_sae = int(sae.W_dec.shape[0])

    def expected(p: int, idx: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        idx, probs = idx.cpu(), probs.cpu().float()
        keep = probs > 0
        ids, col = torch.unique(idx[keep], return_inverse=True)
        rows = torch.arange(idx.shape[0])[:, None].expand_as(idx)[keep]
        dense = torch.zeros(idx.shape[0], len(ids))
        dense.index_put_((rows, col), probs[keep], accumulate=True)
        return dense @ feats.table(p, ids.tolist())

    with torch.no_grad():
        base = [
            expected(p, *_sampling_probs(_last_logits(model, t).float(), temperature, top_k, top_p))
            for p, t in enumerate(toks)
        ]
    out = torch.zeros(len(vectors), d_sae)
    for i in tqdm(
        range(0, len(vectors), batch_size), desc="first-token prior", disable=not progress
    ):
        v = vectors[i : i + batch_size].to(model.cfg.device)
        acc = torch.zeros(len(v), d_sae)
        for p, t in enumerate(toks):
            with torch.no_grad(), steer(model, v, hook, scale=torch.full((len(v),), float(scale))):
                lg = _last_logits(model, t.expand(len(v), -1)).float()
            acc += expected(p, *_sampling_probs(lg, temperature, top_k, top_p)) - base[p]
        out[i : i + len(v)] = acc / len(toks)
    return out


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
        if v.shape[-1] != self.d_model:
            raise ValueError(
                f"input has d_model={v.shape[-1]}, effect model expects {self.d_model}"
            )
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

    def measure_prior(
        self, model: LanguageModel, sae: Any, V: torch.Tensor, progress: bool = False
    ) -> torch.Tensor:
        """:func:`first_token_prior` of each row of ``V`` at the recorded settings."""
        d = self.prior_spec()
        return first_token_prior(
            model, sae, d["hook"], V, d["scale"], d["prompts"], sae_hook=d.get("sae_hook"),
            temperature=d["temperature"], top_k=d["top_k"], top_p=d["top_p"], progress=progress,
        )  # fmt: skip

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
    d = prior_spec(ds)
    return first_token_prior(
        model, sae, d["hook"], ds.inputs.float(), d["scale"], d["prompts"], sae_hook=d["sae_hook"],
        temperature=d["temperature"], top_k=d["top_k"], top_p=d["top_p"], progress=progress,
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
    alpha = torch.tensor([float(report.alpha or 0.0)], dtype=torch.float64)
    plain, _ = fit_ridge(ds, holdout=holdout, alphas=alpha, seed=seed)
    W, b = plain.W.double(), plain.b.double()
    report.method = "ridge_first_token"
    record: dict[str, Any] = dict(lin.record)
    record["fit"] = {**record.get("fit", {}), "method": "ridge_first_token", "k": k}
    record["first_token"] = prior_spec(ds)
    model = FirstTokenEffectModel(
        W.float(), b.float(), record, W_direct=W_direct.float(), b_direct=lin.b.float(),
        basis=basis.float(), mean=mean.float(), M=M.float(),
    )  # fmt: skip
    return model, report

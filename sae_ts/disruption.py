"""The disruption measure of the effect model ``effect ≈ v @ W + φ(z(v)) @ M + b``.

Why it exists: on Gemma 3 270M the effect of steering is far from odd in ``v``. ``v`` and ``-v``
disrupt the generated text alike (the ±v probe, :func:`sae_ts.effect_model.linear_share`: a
Gaussian direction's effect is about half even at 0.2 x the layer norm), and a linear model cannot
fit that part. One measured scalar per vector carries much of it:

* ``z(v)``, :func:`next_token_kl`: the mean over the effect prompts of KL(steered || unsteered) of
  the next token, with ``scale * v`` added at the steering hook. One forward pass per prompt, no
  sampling (0.24 s per vector for Gemma 3 270M on 2 CPU cores).
* ``φ(z) = [ẑ, ẑ²]``, ``ẑ = (z - μ) / σ`` standardised on the training vectors.

:func:`sae_ts.effect_model.fit_ridge_disruption` fits ridge on ``[v, φ(z(v))]`` (one ridge
strength, chosen by CV). :class:`~sae_ts.effect_model.DisruptionEffectModel` is a
:class:`~sae_ts.effect_model.LinearEffectModel` whose linear
part ``v @ W + b`` is the effect at the training-mean disruption (``ẑ = 0``). The solvers plan with
that linear part; its ``predict`` adds the term when given ``z``, and its ``predict_measured``
measures ``z`` on a language model first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ._util import to_tokens
from .backends import is_bridge
from .errors import ConfigError
from .steering import steer
from .types import LanguageModel

__all__ = ["disruption_features", "next_token_fisher", "next_token_kl"]


def _checked(
    model: LanguageModel, vectors: torch.Tensor, prompts: Sequence[str], who: str
) -> list[str]:
    """The non-empty prompts, after checking ``vectors`` is a finite ``[n, d_model]``."""
    prompts = [p for p in prompts if p]
    if not prompts:
        raise ConfigError(f"{who} needs at least one non-empty prompt")
    _check_vectors(model, vectors)
    return prompts


def _check_vectors(model: LanguageModel, vectors: torch.Tensor) -> None:
    """Refuse anything but a finite ``[n, d_model]``."""
    if vectors.ndim != 2 or vectors.shape[1] != model.cfg.d_model:
        raise ConfigError(
            f"vectors must be [n, d_model={model.cfg.d_model}], got {tuple(vectors.shape)}"
        )
    if not torch.isfinite(vectors).all():
        raise ConfigError("vectors contain NaN or inf")


def _last_logits(model: LanguageModel, toks: torch.Tensor) -> torch.Tensor:
    if is_bridge(model):
        return model(toks)[:, -1]
    # unembed the last position only (Gemma's vocabulary is 262k)
    r = model(toks, stop_at_layer=model.cfg.n_layers)[:, -1:]
    return model.unembed(model.ln_final(r))[:, 0]


def _last_logprobs(model: LanguageModel, toks: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return _last_logits(model, toks).float().log_softmax(-1)


def next_token_kl(
    model: LanguageModel,
    hook: str,
    vectors: torch.Tensor,
    scale: float,
    prompts: Sequence[str],
    batch_size: int = 32,
    progress: bool = True,
) -> torch.Tensor:
    """Per vector (``[n, d_model]``, unit rows): the mean over ``prompts`` of the next-token
    KL(steered || unsteered), ``scale * v`` added at ``hook`` at every position. Returns ``[n]``.

    Empty prompts are dropped: the steering hook never steers the document-start sink, so a bare
    ``<bos>`` prompt has nothing to measure.
    """
    prompts = _checked(model, vectors, prompts, "next_token_kl")
    toks = [to_tokens(model, [p]) for p in prompts]  # one row per prompt, tokenised once
    base = [_last_logprobs(model, t) for t in toks]
    out = []
    for i in tqdm(range(0, len(vectors), batch_size), desc="next-token KL", disable=not progress):
        v = vectors[i : i + batch_size]
        kl = torch.zeros(len(v))
        for t, lp0 in zip(toks, base):
            with steer(model, v, hook, scale=torch.full((len(v),), float(scale))):
                lp = _last_logprobs(model, t.expand(len(v), -1))
            kl += (lp.exp() * (lp - lp0)).sum(-1).cpu()
        out.append(kl / len(prompts))
    return torch.cat(out) if out else torch.zeros(0)


def disruption_features(z: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """``φ(z) = [ẑ, ẑ²]`` (``[n, 2]``) with ``ẑ = (z - mean) / std``."""
    zs = ((z.double() - mean) / std)[:, None]
    return torch.cat([zs, zs**2], 1)


def next_token_fisher(
    model: LanguageModel,
    hook: str,
    prompts: Sequence[str],
    top: int = 128,
    progress: bool = True,
) -> torch.Tensor:
    """The Fisher information of the next token with respect to a vector added at ``hook``
    (``[d_model, d_model]``, float64), averaged over ``prompts``: to second order,
    ``next_token_kl(v, scale) ≈ ½ scale² vᵀ F v``.

    ``F = Σ_y p(y) g_y g_yᵀ`` with ``g_y = ∇_δ log p(y | prompt, δ added at hook)`` at ``δ = 0``,
    summed over each prompt's ``top`` most likely next tokens (the rest of the probability mass is
    left out, so ``F`` is slightly too small). One batched forward and backward pass per prompt.
    It lets a solver penalise disruption without measuring it (:func:`sae_ts.solver.solve`'s
    ``max_disruption``).
    """
    prompts = [p for p in prompts if p]
    if not prompts:
        raise ConfigError("next_token_fisher needs at least one non-empty prompt")
    d = model.cfg.d_model
    F = torch.zeros(d, d, dtype=torch.float64)
    for p in tqdm(prompts, desc="next-token Fisher", disable=not progress):
        toks = to_tokens(model, [p])
        p0 = _last_logprobs(model, toks)[0].exp()
        k = min(top, p0.numel())
        probs, ys = p0.topk(k)
        delta = torch.zeros(k, d, device=toks.device, requires_grad=True)
        with torch.enable_grad(), steer(model, delta, hook, scale=torch.ones(k)):
            lp = _last_logits(model, toks.expand(k, -1)).float().log_softmax(-1)
            (G,) = torch.autograd.grad(lp[torch.arange(k), ys.to(lp.device)].sum(), delta)
        G = G.double().cpu()  # row m: the gradient of log p(y_m)
        F += (G.T * probs.double().cpu()) @ G
    return F / len(prompts)

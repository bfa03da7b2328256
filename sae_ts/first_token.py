"""The first-token prior of the effect model (issue #26): ``effect ≈ v @ W + π̃(v) @ M + b``.

A steering vector changes the SAE features of generated text only through the tokens it makes
the model sample (the SAE reads the hooked residual before the vector is added, so a position's
features depend on its tokens alone). The first of those tokens costs one forward pass to
predict, with no sampling:

* ``q_v,p``: the steered next-token distribution on effect prompt ``p``, with ``scale * v``
  added at the steering hook: the campaign's temperature and top-k applied, but not its top-p cut
  (:func:`sae_ts.effect_model.prior_spec`). At SmolLM2's top-p of 0.3 the cut leaves one or two tokens, and the
  graded shift of the untruncated distribution predicts more: cross-validated R² 0.314 against
  0.283 with the cut, held-out R² 0.472 against 0.438 (``docs/results/effects.md``);
* ``G_p[t]``: the SAE features that token ``t`` evokes at its own position after prompt ``p``
  (unsteered; computed once per (prompt, token) pair and cached);
* the prior ``π(v) = mean_p Σ_t (q_v,p(t) - q_0,p(t)) G_p[t]``, ``[d_sae]`` per vector.

:func:`sae_ts.effect_model.fit_ridge_first_token` fits ridge on ``[v, π̃(v)]``, with ``π̃`` the prior projected on
its ``k`` leading principal components (fitted on the training vectors, scaled to the inputs'
norm). On SmolLM2's campaign it lifts held-out R² from 0.348 to about 0.47 at 4,608 vectors
(``benchmarks/effect_model_budget.py --methods ridge,ridge_first_token``; see
``docs/results/effects.md``).

:class:`~sae_ts.effect_model.FirstTokenEffectModel`'s ``W`` and ``b`` are the model's *linearisation* over the
training vectors (``π̃`` regressed on ``v`` by ridge at the fit's strength), which equals plain
ridge on ``v`` at that strength; the solvers plan with it.
:meth:`~sae_ts.effect_model.FirstTokenEffectModel.predict` with a measured prior, or
:meth:`~sae_ts.effect_model.FirstTokenEffectModel.predict_measured`, uses the whole model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ._util import hook_layer, to_tokens
from .backends import is_bridge
from .disruption import _check_vectors, _last_logits
from .errors import ConfigError
from .generation import candidate_probs
from .steering import steer
from .types import LanguageModel

__all__ = ["FirstTokenPrior", "first_token_prior"]


def _sampling_probs(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidate ids and the probabilities :func:`sae_ts.generation.sample` draws them with
    (``temperature == 0`` puts all mass on the argmax)."""
    if temperature == 0.0:
        return logits.argmax(-1, keepdim=True), torch.ones(logits.shape[0], 1)
    return candidate_probs(logits, temperature, top_k, top_p)


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


class FirstTokenPrior:
    """``π(v)`` on one model, SAE and prompt set: the unsteered next-token distributions and the
    token-feature cache are computed once and reused for every call.

    Calling it with ``[n, d_model]`` unit rows returns ``[n, d_sae]`` (float32, on the CPU).
    Gradients flow back to the vectors when they require them (the candidate set, the top-k, is
    held fixed at each call), which is how :func:`sae_ts.solver.solve` ascends the whole
    first-token effect model.
    """

    def __init__(
        self,
        model: LanguageModel,
        sae: Any,
        hook: str,
        scale: float,
        prompts: Sequence[str],
        *,
        sae_hook: str | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> None:
        prompts = [p for p in prompts if p]
        if not prompts:
            raise ConfigError("first_token_prior needs at least one non-empty prompt")
        if not scale > 0 or not torch.isfinite(torch.tensor(float(scale))):
            raise ConfigError(f"scale must be a positive finite number, got {scale}")
        self.model, self.hook, self.scale = model, hook, float(scale)
        self.sampling = (float(temperature), top_k, top_p)
        self.toks = [to_tokens(model, [p]) for p in prompts]
        self.feats = _TokenFeatures(model, sae, sae_hook or hook, self.toks)
        self.d_sae = int(sae.W_dec.shape[0])
        with torch.no_grad():
            self.base = [
                self._expected(p, _last_logits(model, t).float()) for p, t in enumerate(self.toks)
            ]

    def _expected(self, p: int, logits: torch.Tensor) -> torch.Tensor:
        """``Σ_t q(t) G_p[t]`` for each row of ``logits`` ``[B, vocab]``: ``[B, d_sae]``."""
        idx, probs = _sampling_probs(logits, *self.sampling)
        idx, probs = idx.cpu(), probs.cpu().float()
        keep = probs.detach() > 0
        ids, col = torch.unique(idx[keep], return_inverse=True)
        rows = torch.arange(idx.shape[0])[:, None].expand_as(idx)[keep]
        dense = torch.zeros(idx.shape[0], len(ids)).index_put((rows, col), probs[keep], True)
        return dense @ self.feats.table(p, ids.tolist())

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        _check_vectors(self.model, vectors.detach())
        v = vectors.to(self.model.cfg.device)
        acc = torch.zeros(len(v), self.d_sae)
        scale = torch.full((len(v),), self.scale)
        for p, t in enumerate(self.toks):
            with steer(self.model, v, self.hook, scale=scale):
                lg = _last_logits(self.model, t.expand(len(v), -1)).float()
            acc = acc + self._expected(p, lg) - self.base[p]
        return acc / len(self.toks)


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
    :func:`sae_ts.generation.sample`; :func:`sae_ts.effect_model.prior_spec` takes a campaign's temperature and
    top-k and leaves ``top_p`` out.
    """
    _check_vectors(model, vectors)
    prior = FirstTokenPrior(
        model, sae, hook, scale, prompts, sae_hook=sae_hook, temperature=temperature,
        top_k=top_k, top_p=top_p,
    )  # fmt: skip
    out = torch.zeros(len(vectors), prior.d_sae)
    for i in tqdm(
        range(0, len(vectors), batch_size), desc="first-token prior", disable=not progress
    ):
        with torch.no_grad():
            out[i : i + batch_size] = prior(vectors[i : i + batch_size])
    return out

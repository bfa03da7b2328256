"""Target selection: which SAE latents a steering vector aims at, by one of five rules.

Every rule starts from the same contrastive texts (positive and negative examples of the concept)
and returns a :class:`Selection`: the chosen latents with their weights, and the scores of every
candidate it looked at, so a record says which rule picked which latents and why.

* ``"input"`` — today's rule (:func:`~sae_ts.targets.select_targets`): the latents that *fire*
  most consistently on the positive texts and not on the negative ones, dense latents left out.
* ``"output"`` — Arad, Mueller & Belinkov (EMNLP 2025): among the ``candidates`` most selective
  input-side latents, the ones with the highest *output score*. A latent's output score amplifies
  it in one forward pass on a neutral prompt (its decoder row added at the last position, scaled
  by ``amp`` x the largest SAE activation there) and multiplies how high (``1 - rank / vocab``)
  and how likely (the largest probability) its top logit-lens tokens become.
* ``"dtc"`` — ΔToken confidence (after Wang et al. 2025, arXiv 2510.03659): the same
  amplification, scored by how much it changes the next-token distribution: the probability the
  amplified distribution gives its top token minus the probability the unsteered one gave that
  token, averaged over the neutral prompts. (Our reading of the criterion; the paper's code was not
  at hand.)
* ``"fgaa"`` — FGAA's target (Soo et al. 2025, arXiv 2501.09929): the contrastive difference of
  mean SAE activations (positive minus negative texts, sink positions out), with dense latents
  (firing on more than ``fgaa_max_density`` of reference tokens) and latents that fire on the
  document-start token removed; the ``fgaa_pos`` largest positive entries are raised and the
  ``fgaa_neg`` most negative pushed down, weighted by their differences (L2-normalised).
* ``"effect"`` — sae-ts's own, output-side by measurement: every latent is scored by how much
  steering along its decoder row raises the concept's input-side features in generated text, as
  the effect model predicts it (fitted on the measured effects of nearly every decoder row): the
  projection of ``W_dec[j] @ W`` on the unit concept vector (FGAA's filtered difference, positive
  part). The ``top`` highest get equal weights.

All rules except ``"fgaa"`` give ``top`` latents with equal, L2-normalised weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, get_args

import torch

from ._util import hook_layer, to_tokens
from .backends import run_with_cache, run_with_hooks
from .effect_model import LinearEffectModel
from .errors import ConfigError
from .solver import Target
from .targets import LatentDensity, TargetLatent, select_targets, text_activations
from .types import LanguageModel, SAELike

__all__ = [
    "SELECTORS",
    "Selection",
    "SelectorName",
    "choose_targets",
    "concept_vector",
    "delta_token_confidence",
    "output_scores",
]

SelectorName: TypeAlias = Literal["input", "output", "dtc", "fgaa", "effect"]
SELECTORS: tuple[str, ...] = get_args(SelectorName)
NEUTRAL_PROMPTS: tuple[str, ...] = ("From my experience,",)
"""Arad et al.'s neutral prompt for the output score."""


@dataclass
class Selection:
    """The latents a rule chose (weights signed: negative ones are pushed down) and why."""

    method: str
    targets: list[TargetLatent]
    candidates: list[dict[str, Any]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def target(self) -> Target:
        """The solver's :class:`~sae_ts.solver.Target`: positive weights raised, negative pushed
        down."""
        raise_ = {t.latent: t.weight for t in self.targets if t.weight > 0}
        suppress = {t.latent: -t.weight for t in self.targets if t.weight < 0}
        return Target(raise_, (), suppress)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "params": self.params,
            "latents": [t.to_dict() for t in self.targets],
            "candidates": self.candidates,
        }


def _amplified_next_token(
    model: LanguageModel,
    sae: SAELike,
    hook_name: str,
    latents: Sequence[int],
    prompts: Sequence[str],
    amp: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token probabilities ``[prompts, latents, vocab]`` with each latent amplified, and the
    unsteered ones ``[prompts, vocab]``.

    As in Arad et al.'s code: the decoder row is added at the last prompt position, scaled by
    ``amp`` x the largest SAE activation at that position.
    """
    rows = torch.as_tensor(list(latents), dtype=torch.long)
    dec = sae.W_dec[rows].detach().float()  # [n, d]
    out: list[torch.Tensor] = []
    clean: list[torch.Tensor] = []
    for prompt in prompts:
        toks = to_tokens(model, [prompt])
        with torch.no_grad():
            logits, cache = run_with_cache(model, toks, names_filter=hook_name)
            assert isinstance(logits, torch.Tensor)
            last = cache[hook_name][0, -1].float()
            size = amp * float(sae.encode(last[None].to(sae.W_enc.dtype)).max())
            clean.append(logits[0, -1].float().softmax(-1))
            n = len(rows)
            delta = torch.zeros(n, toks.shape[1], dec.shape[1])
            delta[:, -1] = dec * size
            delta = delta.to(last.device)
            probs = []
            for lo in range(0, n, 32):
                part = delta[lo : lo + 32]
                lg = run_with_hooks(
                    model, toks.expand(len(part), -1), fwd_hooks=[(hook_name, _adder(part))]
                )
                probs.append(lg[:, -1].float().softmax(-1).cpu())
            out.append(torch.cat(probs))
    return torch.stack(out), torch.stack(clean).cpu()


def _adder(delta: torch.Tensor) -> Any:
    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return act + delta.to(act.dtype)

    return hook


def output_scores(
    model: LanguageModel,
    sae: SAELike,
    hook_name: str,
    latents: Sequence[int],
    prompts: Sequence[str] = NEUTRAL_PROMPTS,
    amp: float = 10.0,
    logit_lens_k: int = 20,
) -> torch.Tensor:
    """Arad et al.'s output score of each latent (mean over ``prompts``): ``(1 - r / V) x p``,
    with ``r`` the best rank and ``p`` the largest probability, under amplification, of the
    latent's ``logit_lens_k`` top logit-lens tokens (decoder row through the final norm and the
    unembedding)."""
    if not latents:
        return torch.zeros(0)
    rows = torch.as_tensor(list(latents), dtype=torch.long)
    with torch.no_grad():
        dec = sae.W_dec[rows].detach().to(model.cfg.dtype).to(model.cfg.device)
        lens = model.unembed(model.ln_final(dec[:, None, :]))[:, 0].float().cpu()
    top_tokens = lens.topk(logit_lens_k, dim=-1).indices  # [n, k]
    probs, _ = _amplified_next_token(model, sae, hook_name, latents, prompts, amp)
    vocab = probs.shape[-1]
    scores = []
    for pp in probs:  # [n, vocab] for one prompt
        order = pp.argsort(-1, descending=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(vocab).expand_as(order))
        best_rank = rank.gather(1, top_tokens).min(1).values.float()
        best_p = pp.gather(1, top_tokens).max(1).values
        scores.append((1 - best_rank / vocab) * best_p)
    return torch.stack(scores).mean(0)


def delta_token_confidence(
    model: LanguageModel,
    sae: SAELike,
    hook_name: str,
    latents: Sequence[int],
    prompts: Sequence[str] = NEUTRAL_PROMPTS,
    amp: float = 10.0,
) -> torch.Tensor:
    """ΔToken confidence of each latent (mean over ``prompts``): the amplified distribution's top
    probability minus the unsteered probability of that same token."""
    if not latents:
        return torch.zeros(0)
    probs, clean = _amplified_next_token(model, sae, hook_name, latents, prompts, amp)
    top_p, top = probs.max(-1)  # [prompts, n]
    before = torch.stack([clean[i][top[i]] for i in range(len(prompts))])
    return (top_p - before).mean(0)


def _text_means(
    model: LanguageModel, sae: SAELike, texts: Sequence[str], hook_name: str
) -> torch.Tensor:
    """Mean SAE activation over each text's tokens (sinks out), then over texts: ``[d_sae]``."""
    acts = text_activations(model, sae, texts, hook_name)
    d_sae = int(sae.cfg.d_sae)
    per = [f.mean(0) if f.shape[0] else torch.zeros(d_sae) for _, f in acts]
    return torch.stack(per).mean(0)


def _document_start_latents(model: LanguageModel, sae: SAELike, hook_name: str) -> torch.Tensor:
    """Latents that fire on the document-start token when it is encoded (FGAA's BOS filter)."""
    toks = to_tokens(model, [""])
    with torch.no_grad():
        _, cache = run_with_cache(
            model, toks, names_filter=hook_name, stop_at_layer=hook_layer(hook_name) + 1
        )
        act = cache[hook_name][0, -1].float()
        return (sae.encode(act[None].to(sae.W_enc.dtype))[0] > 0).cpu()


def concept_vector(
    model: LanguageModel,
    sae: SAELike,
    pos_texts: Sequence[str],
    neg_texts: Sequence[str],
    hook_name: str,
    density: LatentDensity | None,
    max_density: float = 0.01,
) -> torch.Tensor:
    """FGAA's filtered contrastive target ``[d_sae]``: mean activations on ``pos_texts`` minus
    those on ``neg_texts``, zero for dense latents and for latents that fire on the
    document-start token."""
    diff = _text_means(model, sae, pos_texts, hook_name) - _text_means(
        model, sae, neg_texts, hook_name
    )
    drop = _document_start_latents(model, sae, hook_name)
    if density is not None:
        drop |= density.rate > max_density
    return diff.masked_fill(drop, 0.0)


def _equal(chosen: Sequence[int], stats: Mapping[int, TargetLatent]) -> list[TargetLatent]:
    w = 1.0 / len(chosen) ** 0.5
    out = []
    for j in chosen:
        t = stats[j]
        t.weight = w
        out.append(t)
    return out


def choose_targets(
    method: SelectorName | str,
    model: LanguageModel,
    sae: SAELike,
    pos_texts: Sequence[str],
    neg_texts: Sequence[str],
    hook_name: str,
    *,
    top: int = 3,
    density: LatentDensity | None = None,
    max_density: float = 0.1,
    effect_model: LinearEffectModel | None = None,
    override: Mapping[int, float] | Sequence[int] | None = None,
    candidates: int = 64,
    prompts: Sequence[str] = NEUTRAL_PROMPTS,
    amp: float = 10.0,
    fgaa_pos: int = 10,
    fgaa_neg: int = 5,
    fgaa_max_density: float = 0.01,
) -> Selection:
    """Choose target latents for a concept with one of :data:`SELECTORS` (module docstring).

    ``override`` replaces any rule by a manual choice (recorded as method ``"override"``).
    ``density`` (latent firing rates on reference text) filters dense latents; ``effect_model``
    is needed by ``"effect"``; ``candidates`` is the input-side pool that ``"output"`` and
    ``"dtc"`` re-rank.
    """
    if method not in SELECTORS:
        raise ConfigError(f"unknown target selection {method!r}; choose from {list(SELECTORS)}")

    def pick(n: int, ids: Mapping[int, float] | Sequence[int] | None = None) -> list[TargetLatent]:
        return select_targets(model, sae, pos_texts, neg_texts, hook_name, n, density,
                              max_density, override=ids)  # fmt: skip

    if override is not None:
        chosen = pick(top, override)
        return Selection("override", chosen)
    params: dict[str, Any] = {"top": top, "max_density": max_density}
    if method == "input":
        chosen = pick(top)
        return Selection("input", chosen, params=params)
    if method in ("output", "dtc"):
        pool = pick(candidates)
        ids = [t.latent for t in pool]
        if method == "output":
            score = output_scores(model, sae, hook_name, ids, prompts, amp)
        else:
            score = delta_token_confidence(model, sae, hook_name, ids, prompts, amp)
        order = sorted(range(len(ids)), key=lambda i: (-float(score[i]), i))
        best = [ids[i] for i in order[:top]]
        by_id = {t.latent: t for t in pool}
        cands = [
            {"latent": ids[i], "input_rank": i, "score": round(float(score[i]), 6)} for i in order
        ]
        params.update(candidates=candidates, prompts=list(prompts), amp=amp)
        return Selection(method, _equal(best, by_id), cands, params)
    c = concept_vector(model, sae, pos_texts, neg_texts, hook_name, density, fgaa_max_density)
    if method == "fgaa":
        pos_ids = [int(j) for j in c.topk(min(fgaa_pos, len(c))).indices if c[j] > 0]
        neg_ids = [int(j) for j in (-c).topk(min(fgaa_neg, len(c))).indices if c[j] < 0]
        if not pos_ids:
            raise ConfigError("FGAA: no latent is more active on the positive texts")
        weights = {j: float(c[j]) for j in [*pos_ids, *neg_ids]}
        stats = {t.latent: t for t in pick(top, list(weights))}
        norm = sum(w * w for w in weights.values()) ** 0.5
        chosen = []
        for j, w in weights.items():
            stats[j].weight = w / norm
            chosen.append(stats[j])
        params = {"pos": fgaa_pos, "neg": fgaa_neg, "max_density": fgaa_max_density}
        return Selection("fgaa", chosen, params=params)
    # "effect": predicted concept effect of steering along each decoder row
    if effect_model is None:
        raise ConfigError("target selection 'effect' needs an effect model")
    concept = c.clamp_min(0)
    if float(concept.norm()) == 0:
        raise ConfigError("no latent is more active on the positive texts")
    concept = concept / concept.norm()
    dec = sae.W_dec.detach().float().cpu()
    dec = dec / dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    score = dec @ (effect_model.W.float().cpu() @ concept)  # [d_sae]
    if density is not None:
        score = score.masked_fill(density.rate > max_density, float("-inf"))
    order = score.argsort(descending=True)
    best = [int(j) for j in order[:top]]
    stats = {t.latent: t for t in pick(top, best)}
    cands = [{"latent": int(j), "score": round(float(score[j]), 6)} for j in order[: 4 * top]]
    params["concept_max_density"] = fgaa_max_density
    return Selection("effect", _equal(best, stats), cands, params)

"""Choosing the SAE latents to steer towards for a concept: by selectivity, dense latents out.

:func:`~sae_ts.baselines.find_features` ranks latents by the raw gap in mean activation between
positive and negative texts. That favours latents with large activations and latents that fire
strongly on one positive text's word. :func:`select_targets` ranks by *consistency* instead:

1. ``fire_gap`` = fraction of positive texts on which the latent fires (on any token, sinks and
   the document-start token left out) minus the fraction of negative texts on which it fires;
2. ties broken by ``auroc``: how often a positive text's maximum activation of the latent exceeds
   a negative text's (ties count half);
3. then by ``density``, lower first: the latent's firing rate on ordinary reference text
   (:func:`latent_density`), so that of two equally selective latents the more specific one wins;
4. then by ``gap``: the difference of the mean per-text maximum activations.

Latents firing on more than ``max_density`` of the tokens of ordinary reference text
(:func:`latent_density`) are left out: they are generic, not concept latents. The chosen latents
get equal, L2-normalised weights (as in the SAE-TS code); a manual choice (``override``) keeps its
weights, L2-normalised. Every chosen latent comes with its statistics and its top contexts in the
texts and in the reference text, for the record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ._util import DEFAULT_SINK_RATIO, hook_layer, to_tokens
from .backends import run_with_cache
from .effects import reference_texts
from .errors import ConfigError, InputTypeError
from .sae import sink_positions
from .types import LanguageModel, SAELike

__all__ = ["LatentDensity", "TargetLatent", "latent_density", "select_targets", "text_activations"]


@dataclass
class TargetLatent:
    """A chosen target latent, its weight and why it was chosen."""

    latent: int
    weight: float
    fire_pos: float  # fraction of positive texts on which it fires
    fire_neg: float
    auroc: float  # per-text maximum activation, positives vs negatives
    gap: float  # mean per-text maximum activation, positives minus negatives
    density: float | None  # firing rate on reference-text tokens
    contexts: list[dict[str, Any]] = field(default_factory=list)  # top contexts in the texts
    reference_context: dict[str, Any] | None = None  # its top context in the reference text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LatentDensity:
    """Firing rate of every latent on reference text, with each latent's top reference token."""

    rate: torch.Tensor  # [d_sae]
    max_act: torch.Tensor  # [d_sae]
    argmax: torch.Tensor  # [d_sae] token position of the maximum
    tokens: list[str]  # the reference tokens, as strings
    n_tokens: int

    def context(self, latent: int, left: int = 10, right: int = 3) -> dict[str, Any] | None:
        """The reference-text context around ``latent``'s strongest token (None if it never fires)."""
        if float(self.max_act[latent]) <= 0:
            return None
        p = int(self.argmax[latent])
        lo, hi = max(0, p - left), min(len(self.tokens), p + right + 1)
        return {
            "activation": round(float(self.max_act[latent]), 3),
            "text": "".join(self.tokens[lo:hi]),
            "token": self.tokens[p],
        }


@torch.no_grad()
def text_activations(
    model: LanguageModel,
    sae: SAELike,
    texts: Sequence[str],
    hook_name: str,
    sink_ratio: float = DEFAULT_SINK_RATIO,
) -> list[tuple[list[str], torch.Tensor]]:
    """For each text: its token strings and SAE feature activations ``[n_tokens, d_sae]``.

    The document-start token and attention sinks are left out (the SAE's sink rule).
    """
    if isinstance(texts, str):
        raise InputTypeError("texts must be a list of strings, not one string")
    out = []
    for t in texts:
        toks = to_tokens(model, [t])
        _, cache = run_with_cache(
            model, toks, names_filter=hook_name, stop_at_layer=hook_layer(hook_name) + 1
        )
        acts = cache[hook_name].float()
        keep = ~sink_positions(sae, acts, sink_ratio)[0]
        feats = sae.encode(acts[0][keep].to(sae.W_enc.dtype)).float().cpu()
        pieces = [str(model.to_string(tok[None])) for tok in toks[0][keep.cpu()]]
        out.append((pieces, feats))
    return out


@torch.no_grad()
def latent_density(
    model: LanguageModel,
    sae: SAELike,
    hook_name: str,
    texts: Sequence[str] | None = None,
    window: int = 128,
    sink_ratio: float = DEFAULT_SINK_RATIO,
) -> LatentDensity:
    """Firing rate of every latent on ordinary text (default: :func:`~sae_ts.effects.reference_texts`).

    The text is cut into windows of ``window`` tokens, each starting with the document-start token
    (left out, as are sinks).
    """
    text = " ".join(texts) if texts is not None else " ".join(reference_texts(8000))
    ids = to_tokens(model, [text], prepend_bos=False)[0]
    bos = to_tokens(model, [""])[0]
    d_sae = int(sae.cfg.d_sae)
    fired = torch.zeros(d_sae)
    max_act = torch.zeros(d_sae)
    argmax = torch.zeros(d_sae, dtype=torch.long)
    pieces: list[str] = []
    n = 0
    for start in range(0, len(ids), window - len(bos)):
        chunk = torch.cat([bos, ids[start : start + window - len(bos)]])[None]
        _, cache = run_with_cache(
            model, chunk, names_filter=hook_name, stop_at_layer=hook_layer(hook_name) + 1
        )
        acts = cache[hook_name].float()
        keep = ~sink_positions(sae, acts, sink_ratio)[0]
        feats = sae.encode(acts[0][keep].to(sae.W_enc.dtype)).float().cpu()
        kept = chunk[0][keep.cpu()]
        fired += (feats > 0).float().sum(0)
        if feats.shape[0]:
            m, i = feats.max(0)
            better = m > max_act
            max_act[better] = m[better]
            argmax[better] = i[better] + len(pieces)
        pieces += [str(model.to_string(t[None])) for t in kept]
        n += feats.shape[0]
    if n == 0:
        raise ConfigError("the reference text left no tokens to measure latent density on")
    return LatentDensity(fired / n, max_act, argmax, pieces, n)


def _pairwise_auroc(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """AUROC of every column: ``[n_pos, d]`` against ``[n_neg, d]`` (ties count half)."""
    diff = pos[:, None, :] - neg[None, :, :]
    return ((diff > 0).float() + 0.5 * (diff == 0).float()).mean((0, 1))


def _contexts(
    acts: list[tuple[list[str], torch.Tensor]], labels: list[str], latent: int, n: int
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for (pieces, f), label in zip(acts, labels):
        if f.shape[0] == 0:
            continue
        v, i = f[:, latent].max(0)
        if float(v) > 0:
            rows.append(
                {
                    "activation": round(float(v), 3),
                    "label": label,
                    "text": "".join(pieces),
                    "token": pieces[int(i)],
                }
            )
    return sorted(rows, key=lambda r: -float(r["activation"]))[:n]


def select_targets(
    model: LanguageModel,
    sae: SAELike,
    pos_texts: Sequence[str],
    neg_texts: Sequence[str],
    hook_name: str,
    top: int = 3,
    density: LatentDensity | None = None,
    max_density: float = 0.1,
    override: Mapping[int, float] | Sequence[int] | None = None,
    n_contexts: int = 5,
) -> list[TargetLatent]:
    """The ``top`` most selective latents for ``pos_texts`` vs ``neg_texts`` (module docstring).

    ``override`` replaces the choice with given latents (ids, or ids to weights); their statistics
    are still recorded. Raises :class:`~sae_ts.errors.ConfigError` if no latent qualifies.
    """
    if isinstance(pos_texts, str) or isinstance(neg_texts, str):
        raise InputTypeError("pos_texts and neg_texts must be lists of strings")
    if not pos_texts or not neg_texts:
        raise ConfigError("select_targets needs positive and negative texts")
    if top < 1:
        raise ConfigError(f"top must be >= 1, got {top}")
    d_sae = int(sae.cfg.d_sae)
    acts = text_activations(model, sae, [*pos_texts, *neg_texts], hook_name)
    per_text = torch.stack(
        [f.max(0).values if f.shape[0] else torch.zeros(d_sae) for _, f in acts]
    )  # [n_texts, d_sae]
    P, N = per_text[: len(pos_texts)], per_text[len(pos_texts) :]
    fire_pos, fire_neg = (P > 0).float().mean(0), (N > 0).float().mean(0)
    auroc = _pairwise_auroc(P, N)
    gap = P.mean(0) - N.mean(0)
    rate = density.rate if density is not None else None
    if override is not None:
        weights = (
            dict(override) if isinstance(override, Mapping) else {int(f): 1.0 for f in override}
        )
        bad = [f for f in weights if not 0 <= int(f) < d_sae]
        if not weights or bad:
            raise ConfigError(f"override needs latent ids in [0, {d_sae}); got {list(weights)}")
        if not all(float(w) > 0 for w in weights.values()):
            raise ConfigError("override weights must be > 0")
        chosen = [int(f) for f in weights]
    else:
        fire_gap = fire_pos - fire_neg
        eligible = fire_gap > 0
        if rate is not None:
            eligible &= rate <= max_density
        cand = [int(j) for j in torch.nonzero(eligible).flatten()]
        dens = rate if rate is not None else torch.zeros(d_sae)
        cand.sort(key=lambda j: (-float(fire_gap[j]), -float(auroc[j]), float(dens[j]),
                                 -float(gap[j]), j))  # fmt: skip
        chosen = cand[:top]
        if not chosen:
            raise ConfigError(
                "no SAE latent fires on more positive than negative texts (dense latents excluded)"
            )
        weights = {j: 1.0 for j in chosen}
    norm = sum(float(w) ** 2 for w in weights.values()) ** 0.5
    labels = ["pos"] * len(pos_texts) + ["neg"] * len(neg_texts)
    return [
        TargetLatent(
            latent=j,
            weight=float(weights[j]) / norm,
            fire_pos=float(fire_pos[j]),
            fire_neg=float(fire_neg[j]),
            auroc=float(auroc[j]),
            gap=float(gap[j]),
            density=None if rate is None else float(rate[j]),
            contexts=_contexts(acts, labels, j, n_contexts),
            reference_context=None if density is None else density.context(j),
        )
        for j in chosen
    ]

"""Baselines: CAA and raw SAE-latent steering, and finding SAE features for a concept.

* :func:`caa_vector` — contrastive activation addition: the mean residual on positive texts minus
  the mean on negative texts. ``positions="all"`` averages every position but the document-start
  token and attention sinks (SAE-TS); ``"last"`` takes each text's last token (Tan et al.).
* :func:`sae_latent_vector` — the weighted sum of SAE decoder rows.
* :func:`find_features` — SAE latents ranked by how much more they fire on positive texts.

All vectors are returned unit-norm (``normalize=False`` keeps CAA's raw norm, which Tan et al.'s
multipliers are defined on).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch

from ._util import DEFAULT_SINK_RATIO, hook_layer, sink_mask, to_tokens
from .backends import run_with_cache
from .errors import ConfigError, InputTypeError
from .sae import sink_positions
from .types import LanguageModel, SAELike

__all__ = ["caa_vector", "find_features", "mean_activations", "sae_latent_vector"]


def _check_texts(texts: Sequence[str], name: str) -> list[str]:
    if isinstance(texts, str):
        raise InputTypeError(f"{name} must be a list of strings, not one string")
    texts = list(texts)
    if not texts:
        raise ConfigError(f"{name} is empty")
    if not all(isinstance(t, str) and t.strip() for t in texts):
        raise ConfigError(f"{name} contains an empty or non-string text")
    return texts


@torch.no_grad()
def mean_activations(
    model: LanguageModel,
    texts: Sequence[str],
    hook_name: str,
    positions: Literal["all", "last"] = "all",
    sink_ratio: float | None = DEFAULT_SINK_RATIO,
    batch_size: int = 16,
) -> torch.Tensor:
    """``[n_texts, d_model]``: each text's activation at ``hook_name`` (mean over positions or last)."""
    texts = _check_texts(texts, "texts")
    if positions not in ("all", "last"):
        raise ConfigError(f"positions must be 'all' or 'last', got {positions!r}")
    out = []
    for i in range(0, len(texts), batch_size):
        chunk = texts[i : i + batch_size]
        toks = to_tokens(model, chunk)  # left-padded: the last token is at -1 for every row
        assert model.tokenizer is not None
        lengths = torch.tensor([len(model.tokenizer(t).input_ids) + 1 for t in chunk])
        real = torch.arange(toks.shape[1])[None] >= (toks.shape[1] - lengths)[:, None]
        _, cache = run_with_cache(
            model, toks, names_filter=hook_name, stop_at_layer=hook_layer(hook_name) + 1
        )
        acts = cache[hook_name].float()
        if positions == "last":
            out.append(acts[:, -1])
            continue
        keep = real.to(acts.device)
        first = keep.float().argmax(1)  # each row's document-start position
        keep[torch.arange(len(chunk)), first] = False
        if sink_ratio is not None:
            keep &= ~sink_mask(acts, sink_ratio, first_position=False)
        w = keep.float().unsqueeze(-1)
        out.append((acts * w).sum(1) / w.sum(1).clamp_min(1))
    return torch.cat(out).cpu()


def caa_vector(
    model: LanguageModel,
    pos_texts: Sequence[str],
    neg_texts: Sequence[str],
    hook_name: str,
    positions: Literal["all", "last"] = "all",
    normalize: bool = True,
) -> torch.Tensor:
    """Contrastive activation addition: mean(pos) - mean(neg) at ``hook_name``."""
    pos = mean_activations(model, _check_texts(pos_texts, "pos_texts"), hook_name, positions)
    neg = mean_activations(model, _check_texts(neg_texts, "neg_texts"), hook_name, positions)
    v = pos.mean(0) - neg.mean(0)
    if normalize:
        v = v / v.norm()
    return v


def sae_latent_vector(sae: SAELike, features: Mapping[int, float] | Sequence[int]) -> torch.Tensor:
    """Unit-norm weighted sum of SAE decoder rows."""
    feats = dict(features) if isinstance(features, Mapping) else {int(f): 1.0 for f in features}
    if not feats:
        raise ConfigError("no features given")
    d_sae = int(sae.cfg.d_sae)
    bad = [f for f in feats if not 0 <= int(f) < d_sae]
    if bad:
        raise ConfigError(f"feature ids out of range [0, {d_sae}): {bad}")
    W = sae.W_dec.detach().float().cpu()
    v = sum(w * W[int(f)] / W[int(f)].norm() for f, w in feats.items())
    assert isinstance(v, torch.Tensor)
    return v / v.norm()


@torch.no_grad()
def _feature_means(
    model: LanguageModel, sae: SAELike, texts: list[str], hook_name: str, sink_ratio: float
) -> torch.Tensor:
    sums = torch.zeros(int(sae.cfg.d_sae))
    count = 0
    for t in texts:
        toks = to_tokens(model, [t])
        _, cache = run_with_cache(
            model, toks, names_filter=hook_name, stop_at_layer=hook_layer(hook_name) + 1
        )
        acts = cache[hook_name].float()
        keep = ~sink_positions(sae, acts, sink_ratio)[0]  # the SAE's reference norm
        feats = sae.encode(acts[0][keep].to(sae.W_enc.dtype)).float().cpu()
        sums += feats.sum(0)
        count += int(keep.sum())
    return sums / max(count, 1)


def find_features(
    model: LanguageModel,
    sae: SAELike,
    pos_texts: Sequence[str],
    neg_texts: Sequence[str],
    hook_name: str | None = None,
    top: int = 5,
    sink_ratio: float = DEFAULT_SINK_RATIO,
) -> list[tuple[int, float]]:
    """SAE latents that fire more on ``pos_texts`` than on ``neg_texts``, best first.

    Score: mean activation per token on positive texts minus on negative texts (sinks and the
    document-start token left out). Returns ``[(feature, score), ...]`` with positive scores only.
    """
    hook_name = hook_name or sae.cfg.metadata.hook_name
    pos = _feature_means(model, sae, _check_texts(pos_texts, "pos_texts"), hook_name, sink_ratio)
    neg = _feature_means(model, sae, _check_texts(neg_texts, "neg_texts"), hook_name, sink_ratio)
    diff = pos - neg
    vals, idx = torch.topk(diff, min(top, diff.shape[0]))
    return [(int(i), float(v)) for v, i in zip(vals, idx) if v > 0]

"""Generation: the one sampler and the KV-cached sampling loop.

:func:`sample` is the one top-k/top-p sampler of sae-ts. It samples by inverse CDF from given
uniform noise ``u`` (one number per row), so the caller decides where randomness comes from:
effect estimation draws each rollout's noise from its own seeded stream (results do not depend on
batch composition), :func:`generate` from a ``torch.Generator``.

The order (top-k, then top-p over the renormalised top-k, temperature first) matches Hugging
Face's warpers. Top-p keeps the tokens whose preceding cumulative mass is ``< top_p``: the
smallest set whose mass reaches ``top_p``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from .errors import ConfigError
from .steering import add_hooks
from .types import HookFn

__all__ = ["generate", "sample"]


def sample(
    logits: torch.Tensor,
    u: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """Inverse-CDF sampling of one token per row of ``logits`` ``[batch, vocab]``.

    ``u`` holds one uniform number in [0, 1) per row. Top-k, then top-p, then temperature (applied
    to the logits first); ``temperature == 0`` is greedy and ignores ``u``.
    """
    if temperature == 0.0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    k = logits.shape[-1] if not top_k else min(top_k, logits.shape[-1])
    vals, idx = torch.topk(logits, k, dim=-1)  # sorted, descending
    probs = vals.softmax(-1)
    if top_p is not None and top_p < 1.0:
        cum = probs.cumsum(-1)
        keep = (cum - probs) < top_p  # keep tokens until the mass before them reaches top_p
        probs = probs * keep
        probs = probs / probs.sum(-1, keepdim=True)
    cdf = probs.cumsum(-1)
    choice = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1).to(cdf.dtype)).clamp_max(k - 1)
    return idx.gather(-1, choice)[:, 0]


@torch.no_grad()
def generate(
    model: HookedTransformer,
    tokens: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
) -> torch.Tensor:
    """KV-cached sampling from unpadded ``tokens`` ``[batch, prompt_len]``; returns all tokens.

    ``temperature=0`` is greedy. ``fwd_hooks`` (e.g. a :class:`~sae_ts.steering.SteeringHook` or
    an activation capture) stay on for the prompt pass and every generated token. Each step draws
    one uniform number per row from ``generator`` (on the generator's device) and samples with
    :func:`sample`, so a seeded generator gives the same tokens on the same device.
    """
    if tokens.ndim != 2 or tokens.shape[1] == 0:
        raise ConfigError(f"tokens must be [batch, prompt_len>0], got {tuple(tokens.shape)}")
    device = model.cfg.device
    tokens = tokens.to(device)
    batch = tokens.shape[0]
    noise_device = generator.device if generator is not None else torch.device("cpu")
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, batch)
    out = [tokens]
    with add_hooks(model, fwd_hooks):
        logits = model(tokens, past_kv_cache=cache, return_type="logits")
        for i in range(max_new_tokens):
            u = torch.rand(batch, generator=generator, device=noise_device).to(logits.device)
            nxt = sample(logits[:, -1], u, temperature, top_k, top_p)
            out.append(nxt[:, None])
            if i + 1 < max_new_tokens:
                logits = model(nxt[:, None], past_kv_cache=cache, return_type="logits")
    return torch.cat(out, dim=1)

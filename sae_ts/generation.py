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

from collections.abc import Callable, Sequence

import torch

from .backends import forward_cached, new_kv_cache
from .errors import ConfigError
from .steering import add_hooks
from .types import HookFn, LanguageModel

__all__ = ["NextToken", "candidate_probs", "generate", "gumbel_noise", "sample", "sample_gumbel"]


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
    idx, probs = candidate_probs(logits, temperature, top_k, top_p)
    k = probs.shape[-1]
    cdf = probs.cumsum(-1)
    choice = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1).to(cdf.dtype)).clamp_max(k - 1)
    return idx.gather(-1, choice)[:, 0]


def candidate_probs(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidate ids ``[batch, k]`` (top-k, sorted) and the probabilities :func:`sample`
    draws them with (top-p cut, renormalised; ``temperature > 0``)."""
    vals, idx, keep = _candidates(logits, temperature, top_k, top_p)
    probs = vals.softmax(-1)
    if keep is not None:
        probs = probs * keep
        probs = probs / probs.sum(-1, keepdim=True)
    return idx, probs


def _candidates(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Top-k logits / T (sorted), their ids, and the top-p keep mask (None without top-p)."""
    logits = logits.float() / temperature
    k = logits.shape[-1] if not top_k else min(top_k, logits.shape[-1])
    vals, idx = torch.topk(logits, k, dim=-1)  # sorted, descending
    keep = None
    if top_p is not None and top_p < 1.0:
        probs = vals.softmax(-1)
        keep = (probs.cumsum(-1) - probs) < top_p  # until the mass before a token reaches top_p
    return vals, idx, keep


def sample_gumbel(
    logits: torch.Tensor,
    g: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """Gumbel-max sampling with noise ``g`` ``[batch, vocab]`` indexed by vocabulary id.

    Same candidate set as :func:`sample` (top-k, then the top-p cut on the renormalised top-k);
    within it ``argmax(logit / T + g)`` draws exactly from the truncated distribution. Rows that
    share ``g`` (coupled sampling) pick the same token whenever their logits are close.
    """
    if temperature == 0.0:
        raise ConfigError("Gumbel-max sampling needs temperature > 0")
    vals, idx, keep = _candidates(logits, temperature, top_k, top_p)
    if keep is not None:
        vals = vals.masked_fill(~keep, float("-inf"))
    score = vals + g.gather(-1, idx)
    return idx.gather(-1, score.argmax(-1, keepdim=True))[:, 0]


def gumbel_noise(seeds: Sequence[int], vocab: int, device: torch.device | str) -> torch.Tensor:
    """Standard Gumbel noise ``[len(seeds), vocab]``, one seeded stream per row (on the CPU)."""
    out = torch.empty(len(seeds), vocab)
    for i, s in enumerate(seeds):
        u = torch.rand(vocab, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
        out[i] = -torch.log(-torch.log(u.clamp(1e-300, 1.0 - 1e-16)))
    return out.to(device)


NextToken = Callable[[int, torch.Tensor], torch.Tensor]
"""``next_token(step, last_logits)`` -> one token id per row: a caller-supplied sampler."""


@torch.no_grad()
def generate(
    model: LanguageModel,
    tokens: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
    attention_mask: torch.Tensor | None = None,
    next_token: NextToken | None = None,
    last_stop_at_layer: int | None = None,
) -> torch.Tensor:
    """The KV-cached sampling loop of sae-ts; returns prompt + generated tokens.

    ``tokens`` is ``[batch, prompt_len]``; left-padded prompts pass their ``attention_mask``
    (1 on real tokens; default all ones). ``temperature=0`` is greedy. ``fwd_hooks`` (e.g. a
    :class:`~sae_ts.steering.SteeringHook` or an activation capture) stay on for the prompt pass
    and every generated token. Each step draws one uniform number per row from ``generator`` (on
    the generator's device) and samples with :func:`sample`, so a seeded generator gives the same
    tokens on the same device; ``next_token`` replaces that sampler (effect estimation passes
    per-rollout seeded streams). With ``last_stop_at_layer``, the last sampled token is also run,
    up to that layer only, so that hooks before it see every generated token.
    """
    if tokens.ndim != 2 or tokens.shape[1] == 0:
        raise ConfigError(f"tokens must be [batch, prompt_len>0], got {tuple(tokens.shape)}")
    device = model.cfg.device
    tokens = tokens.to(device)
    batch = tokens.shape[0]
    if attention_mask is None:
        attention_mask = torch.ones_like(tokens)
    elif attention_mask.shape != tokens.shape:
        raise ConfigError(
            f"attention_mask {tuple(attention_mask.shape)} does not match tokens "
            f"{tuple(tokens.shape)}"
        )
    noise_device = generator.device if generator is not None else torch.device("cpu")

    def default_next(step: int, last: torch.Tensor) -> torch.Tensor:
        u = torch.rand(batch, generator=generator, device=noise_device).to(last.device)
        return sample(last, u, temperature, top_k, top_p)

    pick = next_token or default_next
    cache = new_kv_cache(model, batch)
    out = [tokens]
    # Explicit masks: TransformerLens would otherwise mask every token equal to the tokenizer's
    # pad id, generated ones included (SmolLM2 pads with <|im_end|>, which can be sampled).
    mask = attention_mask.to(device).long()
    step_mask = torch.ones(batch, 1, dtype=torch.long, device=device)
    with add_hooks(model, fwd_hooks):
        logits = forward_cached(model, tokens, cache, mask)
        for i in range(max_new_tokens):
            nxt = pick(i, logits[:, -1])
            out.append(nxt[:, None])
            last = i + 1 == max_new_tokens
            if last and last_stop_at_layer is None:
                break
            mask = torch.cat([mask, step_mask], dim=1)
            stop = last_stop_at_layer if last else None
            logits = forward_cached(model, nxt[:, None], cache, mask, stop_at_layer=stop)
    return torch.cat(out, dim=1)

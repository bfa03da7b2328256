"""Steering multiple-choice answers (Tan et al.): where the vector is added, what is scored.

The prompt is the chat-formatted question ending with the assistant turn's header
(:func:`~sae_ts.experiments.reliability.items.mc_prompt`); the answer is ``(A)`` or ``(B)``. For
SmolLM2's ChatML template the end of a prompt plus an answer tokenises as
``… <|im_start|> ass istant \\n ( A )``.

Positions (``positions=``, :data:`SteerPositions`): the vector is added, at every multiplier, to

* ``"tan"`` (default; Tan et al.'s rule from their code): the last prompt token before the
  answer and every answer token — ``\\n``, ``(``, the letter, ``)`` in ChatML (``]`` of
  ``[/INST]``, ``(``, the letter, ``)`` in Llama's format);
* ``"assistant"``: every position of the assistant turn — its header (``<|im_start|>``, ``ass``,
  ``istant``, ``\\n``) and every answer token;
* ``"answer"``: the answer tokens only (``(``, the letter, ``)``); the letter is then read at the
  one steered position before it, which is the rule of sae-ts's first reliability run.

The system prompt, the persona prefix and the question are never steered. The output at the
final ``)`` is not scored, so ``)`` counts as steered but is never run. The unsteered part of
the prompt runs once per item with a KV cache; only the steered tail runs per (vector,
multiplier), for the positive and the negative answer.

Scores (:class:`AnswerCurves`), per item, vector and multiplier:

* ``propensity`` (Tan et al.): the summed logits of the positive answer's tokens minus the
  negative's (``(`` is shared and cancels; the letter's and ``)``'s logits remain);
* ``letter``: logit(positive letter) - logit(negative letter) at the letter position;
* ``format_logprob``: log P(the model writes ``(A)`` or ``(B)``), the probability of the answer
  format, used to check that a strength leaves the format intact.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, get_args

import numpy as np
import torch
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

from ...backends import forward_cached, is_bridge, new_kv_cache
from ...baselines import find_features, mean_activations
from ...effect_model import LinearEffectModel
from ...errors import ConfigError
from ...solver import Target, solve
from ...steering import SteeringHook, add_hooks, check_vector
from ...types import LanguageModel, Method, SAELike
from .items import MULTIPLIERS, MCItem, answer_layout, chat_prompt, mc_prompt

__all__ = [
    "STRENGTHS",
    "AnswerCurves",
    "AnswerTokens",
    "SteerPositions",
    "answer_curves",
    "answer_tokens",
    "caa_mc_vector",
    "sae_ts_mc_vector",
]

SteerPositions: TypeAlias = Literal["tan", "assistant", "answer"]
"""Where the vector is added: Tan et al.'s rule, the whole assistant turn, or the answer only."""

STRENGTHS: tuple[float, ...] = tuple(0.25 * i for i in range(-4, 5))
"""Signed steering strengths in units of the per-token residual norm: -1.0, -0.75, …, 1.0."""


@dataclass(frozen=True)
class AnswerTokens:
    """One item's tokens: the prompt (document start first) and the two answers."""

    prompt: list[int]
    pos: list[int]  # "(" + positive letter + ")"
    neg: list[int]
    n_header: int  # tokens of the assistant turn's header at the end of ``prompt``

    def steered_prompt_tokens(self, positions: SteerPositions) -> int:
        """How many of the prompt's last tokens ``positions`` steers."""
        return {"tan": 1, "assistant": self.n_header, "answer": 0}[positions]

    def steered(self, positions: SteerPositions) -> list[int]:
        """Indices into ``prompt + pos`` that ``positions`` steers."""
        _check_positions(positions)
        start = len(self.prompt) - self.steered_prompt_tokens(positions)
        return list(range(start, len(self.prompt) + len(self.pos)))


def _check_positions(positions: str) -> None:
    if positions not in get_args(SteerPositions):
        raise ConfigError(f"positions must be one of {get_args(SteerPositions)}, got {positions!r}")


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def _tail(tokenizer: Any, head: str, head_ids: list[int], text: str) -> list[int]:
    ids = _encode(tokenizer, text)
    if not text.startswith(head) or ids[: len(head_ids)] != head_ids:
        raise ConfigError(f"the tokenizer merges {text[len(head) :]!r} into the text before it")
    return ids[len(head_ids) :]


def answer_tokens(
    tokenizer: Any, item: MCItem, system: str | None = None, prefix: str = ""
) -> AnswerTokens:
    """Tokenise ``item``'s prompt and its two answers with a prepared tokenizer.

    The document-start token is the tokenizer's BOS (as :func:`sae_ts.models.prepare_tokenizer`
    sets it). Raises :class:`~sae_ts.errors.ConfigError` if the answers do not tokenise as a
    continuation of the prompt, or the two answers differ in length.
    """
    full = chat_prompt(tokenizer, item, system, prefix)
    ids = _encode(tokenizer, full)
    bare = chat_prompt(tokenizer, item, system, prefix, generation_prompt=False)
    header = _tail(tokenizer, bare, _encode(tokenizer, bare), full)
    pos = _tail(tokenizer, full, ids, f"{full}({item.pos})")
    neg = _tail(tokenizer, full, ids, f"{full}({item.neg})")
    if len(pos) != len(neg) or pos == neg:
        raise ConfigError(f"answers ({item.pos}) and ({item.neg}) tokenise as {pos} and {neg}")
    if tokenizer.bos_token_id is None:
        raise ConfigError("the tokenizer has no document-start (BOS) token")
    return AnswerTokens([int(tokenizer.bos_token_id), *ids], pos, neg, len(header))


@dataclass
class AnswerCurves:
    """Answer scores under steering, each ``[n_items, n_vectors, n_multipliers]`` (see module)."""

    propensity: np.ndarray
    letter: np.ndarray
    format_logprob: np.ndarray
    n_answer_tokens: int

    def scores(self, kind: Literal["answer", "letter"] = "answer") -> np.ndarray:
        """``propensity`` (Tan et al.'s summed answer logits) or the ``letter`` logit difference."""
        if kind not in ("answer", "letter"):
            raise ConfigError(f"propensity must be 'answer' or 'letter', got {kind!r}")
        return self.propensity if kind == "answer" else self.letter


def _item_cache(
    cache: TransformerLensKeyValueCache, j: int, rows: int, frozen: bool
) -> TransformerLensKeyValueCache:
    """Row ``j`` of ``cache`` broadcast to ``rows`` rows (views, no copy)."""
    entries = [
        TransformerLensKeyValueCacheEntry(
            e.past_keys[j : j + 1].expand(rows, -1, -1, -1),
            e.past_values[j : j + 1].expand(rows, -1, -1, -1),
            frozen=frozen,
        )
        for e in cache.entries
    ]
    mask = cache.previous_attention_mask[j : j + 1].expand(rows, -1)
    return TransformerLensKeyValueCache(entries, mask, frozen=frozen)


class _ItemState:
    """One item's cached prompt head, broadcast to ``rows`` rows, on either backend.

    :meth:`run` scores tokens after the state and extends it; after :meth:`freeze`, every run
    continues from the frozen state (both answers from the same prefix). A HookedTransformer's
    cache is viewed (no copy) and frozen by TransformerLens; a bridge's Hugging Face cache is
    copied for the item and cropped back to the frozen length after each run.
    """

    def __init__(
        self, model: LanguageModel, cache: Any, mask: torch.Tensor, j: int, rows: int
    ) -> None:
        self.model, self.bridge = model, is_bridge(model)
        self.frozen_len: int | None = None
        if self.bridge:
            c = copy.deepcopy(cache)
            c.batch_select_indices(torch.tensor([j], device=mask.device))
            c.batch_repeat_interleave(rows)
            self.cache, self.mask = c, mask[j : j + 1].expand(rows, -1)
        else:
            self.cache, self.mask = _item_cache(cache, j, rows, frozen=False), mask

    def freeze(self) -> None:
        if self.bridge:
            self.frozen_len = int(self.cache.get_seq_length())
        else:
            self.cache.freeze()

    def run(
        self, hook_name: str, hook: SteeringHook, toks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities and logits (float32, on the CPU) of ``toks`` after the state."""
        toks = toks.to(self.model.cfg.device)
        with add_hooks(self.model, [(hook_name, hook)]):
            if self.bridge:
                mask = torch.cat([self.mask, torch.ones_like(toks)], dim=1)
                out = forward_cached(self.model, toks, self.cache, mask)
                if self.frozen_len is None:
                    self.mask = mask
                else:  # back to the frozen prefix (transformers 5: crop takes -tokens)
                    self.cache.crop(self.frozen_len - int(self.cache.get_seq_length()))
            else:
                out = self.model(
                    toks, attention_mask=torch.ones_like(toks), past_kv_cache=self.cache
                )
        return torch.log_softmax(out.float(), -1).cpu(), out.float().cpu()


def _score(logits: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """``[rows]``: the sum over positions of ``logits[:, i, ids[i]]``."""
    return logits[:, torch.arange(len(ids)), ids].sum(-1)


@torch.no_grad()
def answer_curves(
    model: LanguageModel,
    items: Sequence[MCItem],
    vectors: torch.Tensor,
    hook_name: str,
    multipliers: Sequence[float] = MULTIPLIERS,
    positions: SteerPositions = "tan",
    system: str | None = None,
    prefix: str = "",
    batch_size: int = 8,
    max_rows: int = 96,
) -> AnswerCurves:
    """Score both answers of every item with ``λ * v`` added at ``positions``.

    ``vectors`` is ``[d_model]`` or ``[n_vectors, d_model]`` (the result always has the vector
    axis). Each item's unsteered prompt head runs once (in batches of ``batch_size`` items).
    Its steered tail up to the letter then runs once per (vector, multiplier), ``max_rows``
    rows per forward pass, and the rest of each answer once per answer from that state.
    """
    _check_positions(positions)
    V = vectors[None] if vectors.ndim == 1 else vectors
    if V.ndim != 2:
        raise ConfigError("vectors must be [d_model] or [n_vectors, d_model]")
    for v in V:
        check_vector(v, model.cfg.d_model)
    if max_rows < 1 or batch_size < 1:
        raise ConfigError("batch_size and max_rows must be positive")
    tok = model.tokenizer
    assert tok is not None
    mult = torch.tensor([float(m) for m in multipliers], dtype=torch.float32)
    nv, k = V.shape[0], len(mult)
    n_rows = nv * k  # row = (vector, multiplier)
    vec_rows, scale_rows = V.float().repeat_interleave(k, 0), mult.repeat(nv)
    dev = model.cfg.device
    shape = (len(items), nv, k)
    prop, letter, fmt = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    m_ans = 0
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        ats = [answer_tokens(tok, it, system, prefix) for it in chunk]
        n_pre = {a.steered_prompt_tokens(positions) for a in ats}
        lens = {len(a.pos) for a in ats}
        if len(n_pre) != 1 or len(lens) != 1:
            raise ConfigError("items in a batch need the same header and answer lengths")
        n_steer, m_ans = n_pre.pop(), lens.pop()
        n_run = max(n_steer, 1)  # the last prompt token always runs: it predicts "("
        heads = [a.prompt[:-n_run] for a in ats]
        width = max(map(len, heads))
        pad = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
        toks = torch.tensor([[pad] * (width - len(h)) + h for h in heads], device=dev)
        mask = torch.tensor([[0] * (width - len(h)) + [1] * len(h) for h in heads], device=dev)
        cache = new_kv_cache(model, len(ats))
        forward_cached(model, toks, cache, mask)
        for j, a in enumerate(ats):
            t = next(i for i in range(m_ans) if a.pos[i] != a.neg[i])  # the letter's index
            shared = torch.tensor([a.prompt[-n_run:] + a.pos[:t]])  # the same for both answers
            read = slice(n_run - 1, n_run + t)  # positions predicting answer tokens 0 … t
            sums = {b: (torch.empty(n_rows), torch.empty(n_rows)) for b in ("pos", "neg")}
            let = torch.empty(n_rows)
            for r0 in range(0, n_rows, max_rows):
                r1 = min(n_rows, r0 + max_rows)
                rows = slice(r0, r1)
                c = _ItemState(model, cache, mask, j, r1 - r0)
                hook = SteeringHook(vec_rows[rows], scale_rows[rows], n_run - n_steer)
                lp, lg = c.run(hook_name, hook, shared.expand(r1 - r0, -1))
                lp, lg = lp[:, read], lg[:, read]
                let[rows] = lg[:, t, a.pos[t]] - lg[:, t, a.neg[t]]
                c.freeze()  # both answers continue from the same state
                for b, ans in (("pos", a.pos), ("neg", a.neg)):
                    lp_b, lg_b = _score(lp, ans[: t + 1]), _score(lg, ans[: t + 1])
                    if t + 1 < m_ans:  # the answer's tokens after the letter
                        rest = torch.tensor([ans[t : m_ans - 1]]).expand(r1 - r0, -1)
                        hook = SteeringHook(vec_rows[rows], scale_rows[rows], "all")
                        lp2, lg2 = c.run(hook_name, hook, rest)
                        lp_b, lg_b = (
                            lp_b + _score(lp2, ans[t + 1 :]),
                            lg_b + _score(lg2, ans[t + 1 :]),
                        )
                    sums[b][0][rows], sums[b][1][rows] = lp_b, lg_b
            (lp_pos, lg_pos), (lp_neg, lg_neg) = sums["pos"], sums["neg"]
            prop[start + j] = (lg_pos - lg_neg).view(nv, k).numpy()
            fmt[start + j] = torch.logaddexp(lp_pos, lp_neg).view(nv, k).numpy()
            letter[start + j] = let.view(nv, k).numpy()
    return AnswerCurves(prop, letter, fmt, m_ans)


def caa_mc_vector(
    model: LanguageModel,
    items: Sequence[MCItem],
    hook_name: str,
    system: str | None = None,
    prefix: str = "",
    batch_size: int = 8,
    balance: bool = True,
) -> torch.Tensor:
    """CAA read at the answer letter (Tan et al.: ``steering_token_index=-2`` of ``(A)``).

    The mean over items of act(prompt + "(" + positive letter) - act(… negative letter), at the
    letter. With ``balance`` (default) every answer layout weighs the same (the mean of the
    layouts' means), so letter and Yes/No content cancel even when the layouts are not equally
    represented. Returns the raw (unnormalised) vector, on whose norm Tan et al.'s multipliers
    are defined.
    """
    if not items:
        raise ConfigError("no items to train on")
    pos = [mc_prompt(model, it, system, prefix) + f"({it.pos}" for it in items]
    neg = [mc_prompt(model, it, system, prefix) + f"({it.neg}" for it in items]
    diffs = mean_activations(
        model, pos, hook_name, "last", batch_size=batch_size
    ) - mean_activations(model, neg, hook_name, "last", batch_size=batch_size)
    if balance:
        groups: dict[str, list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault(answer_layout(it), []).append(i)
        v = torch.stack([diffs[idx].mean(0) for idx in groups.values()]).mean(0)
    else:
        v = diffs.mean(0)
    if not math.isfinite(float(v.norm())):
        raise ConfigError("CAA vector is not finite")
    return v


def sae_ts_mc_vector(
    model: LanguageModel,
    sae: SAELike,
    effect_model: LinearEffectModel,
    items: Sequence[MCItem],
    hook_name: str,
    n_features: int = 3,
    method: Method = "sae_ts",
) -> tuple[torch.Tensor, list[tuple[int, float]]]:
    """An SAE-TS vector for a dataset's behaviour, from its training items only.

    The target is the top ``n_features`` SAE latents by :func:`~sae_ts.baselines.find_features`
    on the items' behaviour statements (``pos_text``) against the opposite ones (``neg_text``),
    weighted by their activation gap; the vector is :func:`~sae_ts.solver.solve` with ``method``
    (unit norm). It does not depend on the prompt format. Raises ``ValueError`` when no latent
    fires more on the positive side.
    """
    pos = [it.pos_text for it in items if it.pos_text]
    neg = [it.neg_text for it in items if it.neg_text]
    if not pos or not neg:
        raise ConfigError("the items carry no behaviour statements on one side")
    feats = find_features(model, sae, pos, neg, hook_name, top=n_features)
    if not feats:
        raise ConfigError("no SAE latent fires more on the behaviour's statements")
    total = sum(w for _, w in feats)
    target = Target({f: w / total for f, w in feats})
    return solve(effect_model, target, method), feats

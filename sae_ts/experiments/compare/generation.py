"""Paired generation for the method comparison, with the SAE features of what was generated.

Every condition (a vector and a scale; the unsteered row is the zero vector) is sampled
``samples`` times. Sample ``i`` of every condition continues the same prompt with the same noise
stream: at each step it draws the same uniform number, and the top-k/top-p sampler of
:func:`~sae_ts.generation.sample` turns it into a token by inverse CDF. Conditions are thus paired
sample by sample (identical where the steering changes nothing), and a sample does not depend on
how rows are batched.

With an SAE, each row's mean SAE feature activations over its positions after the
document-start token (sinks left out: norms above the SAE's sink ratio x its reference norm, or
the per-token residual norm where it records none) are recorded as well, read at the steering hook *before*
the vector is added: by causality these equal an unsteered re-run of the generated tokens, as in
the effect protocol (:mod:`sae_ts.effects`). Their difference from the unsteered row on the same
streams is the vector's effect on the text, measured without another pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..._util import DEFAULT_SINK_RATIO, hook_layer, sink_mask, to_tokens
from ...effects import typical_residual_norm
from ...errors import ConfigError
from ...generation import generate, sample
from ...sae import check_pair, sink_reference_norm
from ...steering import SteeringHook
from ...types import HookFn, LanguageModel, SAELike
from .config import CompareConfig

__all__ = ["INSTRUCTION", "Generations", "instructed_prompt", "paired_generations"]

INSTRUCTION = "Always talk about {concept}."
"""The prompting baseline's instruction: a system turn for a model with a chat template."""
BASE_PREFIX = "The following text is about {concept}.\n\n"
"""The prompting baseline for a base model (no chat template): a prefix before the prompt."""


def instructed_prompt(model: LanguageModel, concept: str, prompt: str) -> str:
    """``prompt`` with the concept stated as an instruction: in a system turn before the
    assistant's turn (which starts with ``prompt``) for a chat model, as a prefix for a base
    model. Only the concept's name is used, never a judged text."""
    tok = model.tokenizer
    if tok is not None and getattr(tok, "chat_template", None):
        turn = [{"role": "system", "content": INSTRUCTION.format(concept=concept)}]
        head = tok.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
        return str(head) + prompt
    return BASE_PREFIX.format(concept=concept) + prompt


@dataclass
class Generations:
    """Texts and token ids ``[condition][sample]`` (prompt included) and, with an SAE, feature
    means ``[condition, sample, d_sae]``."""

    texts: list[list[str]]
    tokens: list[list[torch.Tensor]]
    features: torch.Tensor | None = None


def _noise(cfg: CompareConfig, stream: int) -> torch.Tensor:
    """``[samples, max_new_tokens]`` uniforms; row ``i`` is sample ``i``'s own seeded stream."""
    rows = []
    for i in range(cfg.samples):
        seed = int(np.random.SeedSequence([cfg.seed, stream, i]).generate_state(1)[0])
        rows.append(torch.rand(cfg.max_new_tokens, generator=torch.Generator().manual_seed(seed)))
    return torch.stack(rows)


class _FeatureSums:
    """A hook that adds each row's SAE features (positions after the first, sinks out)."""

    def __init__(
        self, sae: SAELike, rows: int, device: torch.device | str, reference_norm: float
    ) -> None:
        self.sae = sae
        self.ratio = float(sae.cfg.metadata.get("sink_ratio", DEFAULT_SINK_RATIO))
        self.ref = reference_norm
        self.sums = torch.zeros(rows, int(sae.cfg.d_sae), device=device)
        self.counts = torch.zeros(rows, device=device)
        self.calls = 0

    def __call__(self, act: torch.Tensor, hook: Any = None) -> None:
        keep = ~sink_mask(act, self.ratio, self.ref, first_position=False)
        if self.calls == 0:
            keep[:, 0] = False  # the document-start token
        self.calls += 1
        feats = self.sae.encode(act.to(self.sae.W_enc.dtype)).float() * keep[..., None]
        self.sums += feats.sum(1)
        self.counts += keep.sum(1)

    def means(self) -> torch.Tensor:
        return (self.sums / self.counts.clamp_min(1)[:, None]).cpu()


@torch.no_grad()
def paired_generations(
    model: LanguageModel,
    hook_name: str,
    vectors: torch.Tensor,
    scales: torch.Tensor,
    cfg: CompareConfig,
    stream: int = 0,
    sae: SAELike | None = None,
    shown: Sequence[str] | None = None,
) -> Generations:
    """``cfg.samples`` paired generations of each condition ``c`` (``scales[c] * vectors[c]``).

    Sample ``i`` continues prompt ``cfg.prompts[i % len(prompts)]`` with the noise stream seeded by
    ``(cfg.seed, stream, i)``. With ``sae`` (reading ``hook_name``), the feature means of every
    row are recorded (module docstring). ``shown`` replaces, in the texts, each prompt by what a
    reader sees of it (the prompting baseline hides its instruction); the tokens keep it.
    """
    if shown is not None and len(shown) != len(cfg.prompts):
        raise ConfigError("need one shown prompt per prompt")
    n_c, n_p = len(scales), len(cfg.prompts)
    if vectors.ndim != 2 or vectors.shape[0] != n_c:
        raise ConfigError(f"need [conditions, d_model] vectors for {n_c} scales")
    ref_norm = 0.0
    if sae is not None:
        check_pair(model, sae, hook_name)
        ref_norm = sink_reference_norm(sae) or typical_residual_norm(model, hook_name)
    u_all = _noise(cfg, stream)
    texts = [[""] * cfg.samples for _ in range(n_c)]
    tokens: list[list[torch.Tensor]] = [[torch.zeros(0)] * cfg.samples for _ in range(n_c)]
    feats = None if sae is None else torch.zeros(n_c, cfg.samples, int(sae.cfg.d_sae))
    for pi, prompt in enumerate(cfg.prompts):
        toks = to_tokens(model, [prompt])
        rows = [(c, i) for c in range(n_c) for i in range(pi, cfg.samples, n_p)]
        for start in range(0, len(rows), cfg.batch_rows):
            batch = rows[start : start + cfg.batch_rows]
            cs = torch.tensor([c for c, _ in batch])
            u = u_all[[i for _, i in batch]]

            def pick(step: int, last: torch.Tensor, u: torch.Tensor = u) -> torch.Tensor:
                return sample(last, u[:, step].to(last.device), cfg.temperature, cfg.top_k,
                              cfg.top_p)  # fmt: skip

            hooks: list[tuple[str, HookFn]] = []
            capture = None
            if sae is not None:  # registered first: reads the activations before steering
                capture = _FeatureSums(sae, len(batch), model.cfg.device or "cpu", ref_norm)
                hooks.append((hook_name, capture))
            hooks.append((hook_name, SteeringHook(vectors[cs].float(), scales[cs].float())))
            ids = generate(
                model, toks.expand(len(batch), -1), cfg.max_new_tokens, fwd_hooks=hooks,
                next_token=pick,
                last_stop_at_layer=None if capture is None else hook_layer(hook_name) + 1,
            )  # fmt: skip
            means = None if capture is None else capture.means()
            for k, ((c, i), r) in enumerate(zip(batch, ids)):
                if shown is None:
                    texts[c][i] = str(model.to_string(r[1:]))
                else:
                    texts[c][i] = shown[pi] + str(model.to_string(r[toks.shape[1] :]))
                tokens[c][i] = r.cpu()
                if feats is not None and means is not None:
                    feats[c, i] = means[k]
    return Generations(texts, tokens, feats)

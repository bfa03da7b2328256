"""Target selection: each rule against a hand computation of its definition, on tiny models."""

from __future__ import annotations

import pytest
import torch

import sae_ts.selection as selection
import sae_ts.targets as targets
from sae_ts._util import to_tokens
from sae_ts.effect_model import LinearEffectModel
from sae_ts.experiments.compare.generation import instructed_prompt
from sae_ts.selection import choose_targets, delta_token_confidence, output_scores
from sae_ts.targets import LatentDensity
from sae_ts.testing import tiny_model, tiny_sae

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def pair():
    model = tiny_model(seed=0)
    return model, tiny_sae(model.cfg.d_model, HOOK, d_sae=16)


def _amplified_probs(model, sae, latent: int, prompt: str, amp: float) -> torch.Tensor:
    toks = to_tokens(model, [prompt])
    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=HOOK)
        size = amp * float(sae.encode(cache[HOOK][0, -1][None]).max())

        def hook(act, hook):
            act = act.clone()
            act[:, -1] += size * sae.W_dec[latent]
            return act

        logits = model.run_with_hooks(toks, fwd_hooks=[(HOOK, hook)])
    return logits[0, -1].softmax(-1)


def test_output_score_follows_its_definition(pair):
    model, sae = pair
    got = output_scores(model, sae, HOOK, [0, 3, 7], prompts=["I think"], amp=10.0, logit_lens_k=5)
    for k, j in enumerate([0, 3, 7]):
        probs = _amplified_probs(model, sae, j, "I think", 10.0)
        with torch.no_grad():
            lens = model.unembed(model.ln_final(sae.W_dec[j][None, None]))[0, 0]
        top = lens.topk(5).indices
        order = probs.argsort(descending=True)
        rank = min(int((order == t).nonzero()) for t in top)
        want = (1 - rank / probs.shape[0]) * float(probs[top].max())
        assert float(got[k]) == pytest.approx(want, rel=1e-4, abs=1e-7)


def test_delta_token_confidence_follows_its_definition(pair):
    model, sae = pair
    assert torch.allclose(
        delta_token_confidence(model, sae, HOOK, [1, 2], ["I think"], amp=0.0), torch.zeros(2)
    )
    got = delta_token_confidence(model, sae, HOOK, [4], ["I think", "The cat"], amp=10.0)
    want = 0.0
    for prompt in ("I think", "The cat"):
        amp = _amplified_probs(model, sae, 4, prompt, 10.0)
        clean = _amplified_probs(model, sae, 4, prompt, 0.0)
        want += float(amp.max() - clean[amp.argmax()]) / 2
    assert float(got[0]) == pytest.approx(want, rel=1e-4, abs=1e-7)


def _fake(monkeypatch, pos, neg, d_sae=16):
    """Per-text token activations: latent 2 higher on positives, latent 9 on negatives, latent 5
    everywhere (dense on reference text), latent 11 fires on positives and on the document start."""

    def acts(model, sae, texts, hook, *a, **kw):
        out = []
        for t in texts:
            f = torch.zeros(3, d_sae)
            if t in pos:
                f[:, 2] = 2.0
                f[0, 11] = 1.0
                f[1, 4] = 0.5
            else:
                f[:, 9] = 1.0
            f[:, 5] = 3.0 if t in pos else 1.0
            out.append((["a", "b", "c"], f))
        return out

    monkeypatch.setattr(targets, "text_activations", acts)
    monkeypatch.setattr(selection, "text_activations", acts)
    start = torch.zeros(d_sae, dtype=torch.bool)
    start[11] = True
    monkeypatch.setattr(selection, "_document_start_latents", lambda m, s, h: start)
    rate = torch.full((d_sae,), 0.001)
    rate[5] = 0.5
    return LatentDensity(rate, torch.ones(d_sae), torch.zeros(d_sae, dtype=torch.long), ["x"], 9)


def test_fgaa_weights_the_filtered_contrastive_difference(monkeypatch, pair):
    model, sae = pair
    pos, neg = ["p1", "p2"], ["n1", "n2"]
    dens = _fake(monkeypatch, pos, neg)
    sel = choose_targets("fgaa", model, sae, pos, neg, HOOK, density=dens, fgaa_pos=3, fgaa_neg=1)
    w = {t.latent: t.weight for t in sel.targets}
    # latent 5 is dense and 11 fires on the document start: both filtered out
    assert set(w) == {2, 4, 9}
    raw = {2: 2.0, 4: 0.5 / 3, 9: -1.0}
    norm = sum(v * v for v in raw.values()) ** 0.5
    assert all(w[j] == pytest.approx(raw[j] / norm) for j in raw)
    target = sel.target()
    assert set(target.raise_) == {2, 4} and set(target.suppress) == {9}
    assert sel.to_dict()["method"] == "fgaa"


def test_effect_selection_picks_the_row_whose_predicted_effect_hits_the_concept(monkeypatch, pair):
    model, sae = pair
    pos, neg = ["p1", "p2"], ["n1", "n2"]
    dens = _fake(monkeypatch, pos, neg)
    d = model.cfg.d_model
    concept = torch.zeros(16)
    concept[2] = 1.0
    # steering along latent 7's decoder row raises latent 2 (the concept) in generated text
    W = torch.outer(sae.W_dec[7].detach(), concept) + 0.01 * torch.randn(d, 16)
    em = LinearEffectModel(W, torch.zeros(16))
    sel = choose_targets("effect", model, sae, pos, neg, HOOK, top=2, density=dens, effect_model=em)
    assert sel.targets[0].latent == 7 and sel.candidates[0]["latent"] == 7
    assert all(t.weight == pytest.approx(2**-0.5) for t in sel.targets)
    with pytest.raises(ValueError, match="needs an effect model"):
        choose_targets("effect", model, sae, pos, neg, HOOK, density=dens)


def test_output_and_dtc_rerank_the_input_pool(monkeypatch, pair):
    model, sae = pair
    pos, neg = ["p1", "p2"], ["n1", "n2"]
    dens = _fake(monkeypatch, pos, neg)
    for rule in ("output", "dtc"):
        sel = choose_targets(rule, model, sae, pos, neg, HOOK, top=1, density=dens)
        pool = {c["latent"] for c in sel.candidates}
        assert pool == {2, 4, 11}  # fire more on positives; the dense latent 5 left out
        best = max(sel.candidates, key=lambda c: c["score"])
        assert sel.targets[0].latent == best["latent"] and sel.method == rule
    with pytest.raises(ValueError, match="unknown target selection"):
        choose_targets("magic", model, sae, pos, neg, HOOK)
    manual = choose_targets("output", model, sae, pos, neg, HOOK, override={4: 1.0})
    assert manual.method == "override" and [t.latent for t in manual.targets] == [4]


def test_instructed_prompt_uses_a_system_turn_or_a_prefix(pair):
    model, _ = pair
    chat = instructed_prompt(model, "weddings", "I think")
    assert "<|im_start|>system" in chat and "weddings" in chat and chat.endswith("I think")
    base = tiny_model(seed=1)
    base.tokenizer.chat_template = None
    plain = instructed_prompt(base, "weddings", "I think")
    assert plain == "The following text is about weddings.\n\nI think"

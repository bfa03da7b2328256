"""HookedTransformer and TransformerBridge give the same numbers through sae-ts (issue #30)."""

from __future__ import annotations

import pytest
import torch

import sae_ts
from sae_ts._util import to_tokens
from sae_ts.backends import _bridge_cache_compat, check_backend, is_bridge, run_with_cache
from sae_ts.errors import ConfigError
from sae_ts.generation import generate
from sae_ts.steering import steer
from sae_ts.testing import tiny_pair

HOOK = "blocks.0.hook_resid_post"
TEXTS = ["hello world", "a b c d e"]  # different lengths: the first row is left-padded


@pytest.fixture(scope="module")
def pair():
    return tiny_pair(seed=0)


def _uncached_greedy(model, toks: torch.Tensor, n: int) -> torch.Tensor:
    x = toks
    for _ in range(n):
        nxt = model(x, return_type="logits")[:, -1].argmax(-1, keepdim=True)
        x = torch.cat([x, nxt], 1)
    return x


def test_bridge_kv_cache_is_used(pair):
    """The one generation loop's cached greedy tokens equal an uncached re-run on the bridge.

    Without the fix in sae_ts.backends, transformers 5 hands the cache to attention as `cache=`,
    TransformerLens 3.9's attention bridge ignores it, and every cached step attends to itself.
    """
    _, bridge = pair
    toks = to_tokens(bridge, "hello world")
    cached = generate(bridge, toks, 8, temperature=0)
    assert torch.equal(cached, _uncached_greedy(bridge, toks, 8))


def test_without_the_fix_cached_generation_breaks():
    _, bridge = tiny_pair(seed=1)
    for block in bridge.blocks:  # remove the compat pre-hooks
        hooks = block.attn._forward_pre_hooks
        for k in [k for k, h in hooks.items() if h is _bridge_cache_compat]:
            del hooks[k]
    toks = to_tokens(bridge, "hello world")
    assert not torch.equal(
        generate(bridge, toks, 8, temperature=0), _uncached_greedy(bridge, toks, 8)
    )


def test_same_tokens_and_activations(pair):
    hooked, bridge = pair
    t1, t2 = to_tokens(hooked, TEXTS), to_tokens(bridge, TEXTS)
    assert torch.equal(t1, t2)
    _, c1 = run_with_cache(hooked, t1, names_filter=HOOK)
    _, c2 = run_with_cache(bridge, t1, names_filter=HOOK)
    real = t1 != hooked.tokenizer.pad_token_id  # padded positions are masked, not compared
    a, b = c1[HOOK][real], c2[HOOK][real]
    assert float((a - b).norm() / a.norm()) < 1e-5


@pytest.mark.parametrize("positions", ["all", "from_prompt_end"])
def test_same_steered_tokens(pair, positions):
    hooked, bridge = pair
    toks = to_tokens(hooked, TEXTS)
    v = torch.randn(hooked.cfg.d_model, generator=torch.Generator().manual_seed(0))
    outs = []
    for scale in (0.0, 0.3, 1.0):
        got = []
        for m in (hooked, bridge):
            with steer(m, v, HOOK, scale=scale, positions=positions):
                got.append(generate(m, toks, 8, temperature=0))
        assert torch.equal(got[0], got[1]), scale
        outs.append(got[0])
    assert not torch.equal(outs[0], outs[2])  # the scales change the text


def test_same_effects(pair):
    hooked, bridge = pair
    sae = sae_ts.testing.tiny_sae(d_in=hooked.cfg.d_model, hook_name=HOOK)
    dirs = torch.randn(3, hooked.cfg.d_model, generator=torch.Generator().manual_seed(1))
    cfg = sae_ts.EffectConfig(prompts=("hello", "a b"), seq_len=8, rollouts=2)
    effects = [
        sae_ts.EffectEstimator(m, sae, config=cfg, seed=0).measure(dirs, 2.0)
        for m in (hooked, bridge)
    ]
    assert torch.allclose(effects[0], effects[1], atol=1e-4)


def test_backend_names_are_checked():
    assert check_backend("bridge") == "bridge"
    with pytest.raises(ConfigError, match="unknown backend"):
        check_backend("vllm")
    with pytest.raises(ConfigError, match="unknown backend"):
        sae_ts.load("smollm2-135m", backend="vllm")  # type: ignore[arg-type]


@pytest.mark.slow
def test_embedded_model_parity_on_both_backends(real_model):
    """SmolLM2 on both backends: activations at the SAE hook, steered greedy tokens at three
    scales that change the text (with a left-padded row), and the SAE features."""
    bridge, sae, hook = sae_ts.load_default(backend="bridge")
    assert is_bridge(bridge) and not is_bridge(real_model)
    text = "The bride and groom said their vows in the old church by the sea."
    toks = to_tokens(real_model, text)
    _, c1 = run_with_cache(real_model, toks, names_filter=hook)
    _, c2 = run_with_cache(bridge, toks, names_filter=hook)
    a, b = c1[hook][:, 1:], c2[hook][:, 1:]  # position 0 is the attention sink
    assert float((a - b).norm() / a.norm()) < 1e-5
    f1, f2 = sae.encode(a), sae.encode(b)
    assert float((f1 - f2).abs().max()) < 1e-2 * float(f1.abs().max())
    prompts = to_tokens(real_model, ["I think", "The weather today"])
    v = sae.W_dec[3394].detach()
    texts = []
    for scale in (0.0, 40.0, 80.0, 120.0):
        got = []
        for m in (real_model, bridge):
            with steer(m, v, hook, scale=scale):
                got.append(generate(m, prompts, 12, temperature=0))
        assert torch.equal(got[0], got[1]), scale
        texts.append(real_model.to_string(got[0][0]))
    assert len(set(texts)) == 4  # every scale changes the text


@pytest.mark.parametrize("rule", ["tan", "answer"])
def test_reliability_curves_agree(pair, rule):
    """The reliability analysis's cached scoring (one KV cache per item, forked per steering
    vector, frozen for both answers) gives the same curves on both backends."""
    import numpy as np

    from sae_ts.experiments.reliability.items import to_mc_items
    from sae_ts.experiments.reliability.steering import answer_curves
    from tests.experiments.reliability.test_reliability import persona_records

    hooked, bridge = pair
    items = to_mc_items(persona_records(2, 1))
    V = torch.randn(2, hooked.cfg.d_model, generator=torch.Generator().manual_seed(0))
    mult = (-2.0, 0.0, 3.0)
    a, b = (
        answer_curves(m, items, V, HOOK, mult, rule, batch_size=2, max_rows=5)
        for m in (hooked, bridge)
    )
    for field in ("propensity", "letter", "format_logprob"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), atol=1e-4)
    assert not np.allclose(a.propensity[:, 0, 0], a.propensity[:, 0, 2])


@pytest.mark.slow
def test_embedded_model_effects_on_both_backends(real_model):
    """A short `sae-ts estimate`-style measurement gives the same effects on both backends: the
    logits agree to ~5e-5, so the seeded streams sample the same tokens, and the SAE reads the
    same activations (measured: 4e-7 relative)."""
    bridge, sae, _ = sae_ts.load_default(backend="bridge")
    dirs = sae.W_dec[[3394, 100, 2000]].detach()
    cfg = sae_ts.EffectConfig(
        prompts=("I think", "The weather"), seq_len=12, rollouts=2, baseline_multiplier=2
    )
    a, b = (
        sae_ts.EffectEstimator(m, sae, config=cfg, seed=0).measure(dirs, 72.0, progress=False)
        for m in (real_model, bridge)
    )
    assert float((a - b).norm() / a.norm()) < 1e-4


def test_sae_encoding_and_splicing_agree(pair):
    """sae-ts's own hooks encode and splice an SAE the same way on both backends (explained
    variance, L0 and the CE loss with the reconstruction spliced in)."""
    from sae_ts.sae import evaluate_sae

    hooked, bridge = pair
    sae = sae_ts.testing.tiny_sae(d_in=hooked.cfg.d_model, hook_name=HOOK, architecture="jumprelu")
    text = "the quick brown fox jumps over the lazy dog and runs far away " * 4
    res = [evaluate_sae(m, sae, [text], context_size=24, max_tokens=96) for m in (hooked, bridge)]
    for field in ("explained_variance", "l0", "ce_clean", "ce_sae", "ce_mean_ablated"):
        a, b = getattr(res[0], field), getattr(res[1], field)
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), (field, a, b)


def test_load_accepts_a_bridge_you_already_have(pair):
    _, bridge = pair
    sae = sae_ts.testing.tiny_sae(d_in=bridge.cfg.d_model, hook_name=HOOK)
    loaded = sae_ts.load(bridge, sae)
    assert loaded.model is bridge and loaded.hook_name == HOOK
    wrong = sae_ts.testing.tiny_sae(d_in=32, hook_name=HOOK)
    with pytest.raises(sae_ts.SaeTsError):
        sae_ts.load(bridge, wrong)


def test_calibration_refuses_a_bridge_clearly(pair):
    _, bridge = pair
    with pytest.raises(ConfigError, match="start_at_layer"):
        sae_ts.calibrate_scales(bridge, torch.ones(bridge.cfg.d_model), HOOK)

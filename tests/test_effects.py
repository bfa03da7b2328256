from __future__ import annotations

import pytest
import torch

from sae_ts.artifacts import ArtifactError
from sae_ts.effects import (
    EffectConfig,
    EffectEstimator,
    calibrate_scales,
    decoder_directions,
    estimate_effects,
    random_directions,
)
from sae_ts.steering import steer
from sae_ts.testing import tiny_sae

HOOK = "blocks.0.hook_resid_post"


CFG = EffectConfig(
    prompts=("", "I think", "The weather"),
    seq_len=8,
    rollouts=2,
    baseline_multiplier=2,
    batch_rows=64,
)


@pytest.fixture(scope="module")
def sae(tiny):
    return tiny_sae(tiny.cfg.d_model)


def test_no_second_pass_equals_explicit_rerun(tiny, sae):
    """Causality: SAE-hook activations read before steering == an unsteered re-run's."""
    vecs = random_directions(3, tiny.cfg.d_model, seed=1)
    direct = EffectEstimator(tiny, sae, config=CFG, seed=5)
    assert not direct.rerun
    a = direct.measure(vecs, 3.0, progress=False)
    rerun = EffectEstimator(tiny, sae, config=CFG, seed=5)
    rerun.rerun = True  # force the explicit re-run path
    b = rerun.measure(vecs, 3.0, progress=False)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    # steering changed what was generated, so the measurement is not trivially the baseline
    base = direct.baseline(progress=False)
    assert (a - base).abs().max() > 1e-3


def test_sae_after_steer_hook_uses_rerun(tiny):
    sae1 = tiny_sae(tiny.cfg.d_model, hook_name="blocks.1.hook_resid_post")
    est = EffectEstimator(tiny, sae1, steer_hook=HOOK, config=CFG)
    assert est.rerun
    out = est.measure(random_directions(2, tiny.cfg.d_model), 2.0, progress=False)
    assert out.shape == (2, 48) and torch.isfinite(out).all()


def test_batched_equals_unbatched(tiny, sae):
    vecs = random_directions(4, tiny.cfg.d_model, seed=2)
    est = EffectEstimator(tiny, sae, config=CFG, seed=3)
    together = est.measure(vecs, 2.5, progress=False)
    small = EffectEstimator(
        tiny, sae, config=EffectConfig(**{**CFG.to_dict(), "batch_rows": 2}), seed=3
    )
    for i in range(4):
        alone = small.measure(vecs[i], 2.5, vector_ids=[i], progress=False)
        assert torch.allclose(together[i], alone[0], atol=1e-5)


def test_measure_matches_a_manual_steered_generation(tiny, sae):
    """One rollout, greedy: the estimator's mean equals SAE features of a hand-run generation."""
    cfg = EffectConfig(
        prompts=("I think",), seq_len=7, rollouts=1, temperature=0.0, batch_rows=4, sink_ratio=1e9
    )
    est = EffectEstimator(tiny, sae, config=cfg)
    v = random_directions(1, tiny.cfg.d_model, seed=9)[0]
    got = est.measure(v, 4.0, progress=False)[0]
    from sae_ts.generation import generate
    from sae_ts.models import to_tokens

    toks = to_tokens(tiny, ["I think"])
    with steer(tiny, v, HOOK, scale=4.0):
        seq = generate(tiny, toks, 7 - toks.shape[1], temperature=0.0)
    _, cache = tiny.run_with_cache(seq, names_filter=HOOK)
    feats = sae.encode(cache[HOOK][0, 1:])
    assert torch.allclose(got, feats.mean(0), atol=1e-5)


def test_resume_equals_uninterrupted(tiny, sae, tmp_path):
    vecs = random_directions(6, tiny.cfg.d_model, seed=4)
    est = EffectEstimator(tiny, sae, config=CFG, seed=11)
    full = estimate_effects(est, vecs, 2.0, out_dir=tmp_path / "a", chunk_size=2, progress=False)
    # simulate a kill after the first chunk: remove later chunks
    partial = tmp_path / "b"
    estimate_effects(est, vecs[:2], 2.0, out_dir=tmp_path / "tmp", chunk_size=2, progress=False)
    estimate_effects(est, vecs, 2.0, out_dir=partial, chunk_size=2, progress=False)
    for f in partial.glob("chunk_0000[12].*"):
        f.unlink()
    resumed = estimate_effects(est, vecs, 2.0, out_dir=partial, chunk_size=2, progress=False)
    assert torch.equal(full.effects, resumed.effects)
    assert torch.equal(full.inputs, resumed.inputs)
    # a different seed in the same directory is refused
    with pytest.raises(ArtifactError, match="differing: seed"):
        estimate_effects(
            EffectEstimator(tiny, sae, config=CFG, seed=12),
            vecs,
            2.0,
            out_dir=partial,
            chunk_size=2,
            progress=False,
        )
    # the dataset round-trips
    full.save(tmp_path / "ds")
    from sae_ts.effects import EffectDataset

    back = EffectDataset.load(tmp_path / "ds")
    assert torch.equal(back.effects, full.effects) and back.record["seed"] == 11


@pytest.mark.slow
def test_calibrated_scales_hit_the_loss_target(real_model):
    hook = "blocks.12.hook_resid_post"
    ref = [
        "The history of the city begins with a small settlement on the river, where traders met to "
        "exchange grain, salt and cloth. Over the centuries it grew into a market town."
    ]
    vecs = random_directions(2, real_model.cfg.d_model, seed=7)
    scales = calibrate_scales(real_model, vecs, hook, target_increase=0.5, reference=ref)
    assert scales.shape == (2,) and (scales > 0).all()
    from sae_ts.models import to_tokens

    toks = to_tokens(real_model, ref)
    base = real_model(toks, return_type="loss").item()
    for v, s in zip(vecs, scales.tolist()):
        with steer(real_model, v, hook, scale=s):
            got = real_model(toks, return_type="loss").item()
        assert abs(got - base - 0.5) < 0.02, (got - base, s)


def test_bad_inputs(tiny, sae):
    est = EffectEstimator(tiny, sae, config=CFG)
    with pytest.raises(ValueError, match="shape"):
        est.measure(torch.ones(3, tiny.cfg.d_model + 1), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        est.measure(torch.full((tiny.cfg.d_model,), float("nan")), 1.0)
    with pytest.raises(ValueError, match="feature ids"):
        decoder_directions(sae, [0, 999])
    with pytest.raises(ValueError, match="d_in"):
        EffectEstimator(tiny, tiny_sae(32), config=CFG)
    with pytest.raises(ValueError, match="not a hook point"):
        EffectEstimator(
            tiny, tiny_sae(tiny.cfg.d_model, hook_name="blocks.5.hook_resid_post"), config=CFG
        )
    with pytest.raises(ValueError, match="seq_len"):
        EffectEstimator(
            tiny,
            sae,
            config=EffectConfig(
                prompts=("one two three four five six seven eight nine",), seq_len=4
            ),
        )
    with pytest.raises(ValueError, match="zero vector"):
        estimate_effects(est, torch.zeros(2, tiny.cfg.d_model), 1.0, progress=False)


@pytest.mark.slow
def test_embedded_effects_are_pinned(real_model):
    """A fixed-seed effect on the embedded model, pinned across refactors.

    Recorded before the layout refactor (issue 11) with the estimator's own sink threshold
    (7 x the reference-text median, 1006.2) and unchanged, bit for bit, with the one sink rule
    (7 x the SAE's recorded reference norm 143.341 = 1003.4).
    """
    from sae_ts.sae import load_default_sae

    sae = load_default_sae()
    est = EffectEstimator(real_model, sae, config=EffectConfig(rollouts=1, seq_len=16), seed=0)
    v = torch.cat(
        [
            decoder_directions(sae, n=1, seed=0),
            random_directions(1, real_model.cfg.d_model, seed=0),
        ]
    )
    eff = est.measure(v, 30.0, progress=False) - est.baseline(progress=False)
    assert torch.allclose(eff.sum(1), torch.tensor([-10.7685, 0.6605]), atol=2e-3), eff.sum(1)
    assert torch.allclose(eff.abs().sum(1), torch.tensor([160.9566, 134.3208]), atol=2e-3)

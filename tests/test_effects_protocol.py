"""The measurement protocol's correctness: generated pad tokens, coupled sampling, resume keys."""

from __future__ import annotations

import pytest
import torch

from sae_ts.artifacts import ArtifactError
from sae_ts.effects import (
    EffectConfig,
    EffectDataset,
    EffectEstimator,
    estimate_effects,
    random_directions,
)
from sae_ts.generation import generate, sample_gumbel
from sae_ts.steering import steer
from sae_ts.testing import tiny_sae

from .test_effects import CFG, HOOK

COUPLED = EffectConfig(**{**CFG.to_dict(), "coupled": True})


@pytest.fixture(scope="module")
def sae(tiny):
    return tiny_sae(tiny.cfg.d_model)


def test_generated_pad_token_is_attended(tiny, sae):
    """A rollout that samples the pad id (SmolLM2: <|im_end|>) must not be masked from then on."""
    pad = tiny.tokenizer.pad_token_id
    cfg = EffectConfig(
        prompts=("I think",), seq_len=7, rollouts=1, temperature=0.0, batch_rows=4, sink_ratio=1e9
    )
    v = random_directions(1, tiny.cfg.d_model, seed=9)[0]
    old = tiny.unembed.b_U.data.clone()
    try:
        tiny.unembed.b_U.data[pad] += 1e4  # greedy decoding now always picks the pad id
        got = EffectEstimator(tiny, sae, config=cfg).measure(v, 4.0, progress=False)[0]
        from sae_ts.models import to_tokens

        toks = to_tokens(tiny, ["I think"])
        with steer(tiny, v, HOOK, scale=4.0):
            seq = generate(tiny, toks, 7 - toks.shape[1], temperature=0.0)
        assert (seq[0, toks.shape[1] :] == pad).all()  # the pad id really was generated
        # reference: one uncached pass over the whole sequence, every position attended
        _, cache = tiny.run_with_cache(seq, names_filter=HOOK, attention_mask=torch.ones_like(seq))
        want = sae.encode(cache[HOOK][0, 1:]).mean(0)
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    finally:
        tiny.unembed.b_U.data.copy_(old)


def test_gumbel_sampler_draws_from_the_truncated_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -9.0]])
    n = 20000
    g = -torch.log(-torch.log(torch.rand(n, 4, generator=torch.Generator().manual_seed(0))))
    out = sample_gumbel(logits.expand(n, -1), g, 1.0, top_k=3, top_p=None)
    freq = torch.bincount(out, minlength=4).double() / n
    want = torch.tensor([2.0, 1.0, 0.0]).softmax(0).double()
    assert freq[3] == 0 and torch.allclose(freq[:3], want, atol=0.015), freq
    out = sample_gumbel(logits.expand(n, -1), g, 1.0, top_k=None, top_p=0.5)
    assert out.unique().tolist() == [0]


def test_coupled_zero_scale_gives_zero_effect(tiny, sae):
    """Steered and baseline rows share their noise, so an unsteered 'vector' has no effect.

    Zero up to float rounding: with several BLAS threads a batch of 18 rows and one of 6 can
    round differently, which is orders of magnitude below the sampling noise checked after.
    """
    est = EffectEstimator(tiny, sae, config=COUPLED, seed=3)
    vecs = random_directions(3, tiny.cfg.d_model, seed=2)
    zero = est.measure(vecs, 0.0, progress=False)
    base = est.baseline(progress=False)
    coupled_err = float((zero - base).abs().max())
    assert coupled_err < 1e-4, coupled_err
    # independent streams: the same zero-scale 'vectors' show sampling noise
    indep = EffectEstimator(tiny, sae, config=CFG, seed=3)
    noise = (indep.measure(vecs, 0.0, progress=False) - indep.baseline(progress=False)).abs().max()
    assert noise > 1e-2 > 100 * coupled_err, (float(noise), coupled_err)
    # and steering does change the coupled measurement
    assert (est.measure(vecs, 3.0, progress=False) - base).abs().max() > 1e-3


def test_coupled_batched_equals_unbatched(tiny, sae):
    vecs = random_directions(3, tiny.cfg.d_model, seed=5)
    together = EffectEstimator(tiny, sae, config=COUPLED, seed=1).measure(vecs, 2.5, progress=False)
    small = EffectEstimator(
        tiny, sae, config=EffectConfig(**{**COUPLED.to_dict(), "batch_rows": 2}), seed=1
    )
    for i in range(3):
        alone = small.measure(vecs[i], 2.5, vector_ids=[i], progress=False)
        assert torch.allclose(together[i], alone[0], atol=1e-5)


def test_resume_refuses_another_scale_or_sae(tiny, sae, tmp_path):
    vecs = random_directions(4, tiny.cfg.d_model, seed=4)
    est = EffectEstimator(tiny, sae, config=CFG, seed=11)
    out = tmp_path / "run"
    full = estimate_effects(
        est, vecs, 2.0, out_dir=out, chunk_size=2, progress=False, store_dtype=torch.float16
    )
    assert full.effects.dtype == torch.float32
    assert torch.equal(full.effects, full.effects.half().float())  # rounded like the chunks
    with pytest.raises(ArtifactError, match="scales_fingerprint"):
        estimate_effects(est, vecs, 3.0, out_dir=out, chunk_size=2, progress=False,
                         store_dtype=torch.float16)  # fmt: skip
    other = EffectEstimator(tiny, tiny_sae(tiny.cfg.d_model, seed=1), config=CFG, seed=11)
    with pytest.raises(ArtifactError, match="sae_fingerprint"):
        estimate_effects(other, vecs, 2.0, out_dir=out, chunk_size=2, progress=False,
                         store_dtype=torch.float16)  # fmt: skip
    # a partly finished directory loads chunk by chunk
    (out / "chunk_00001.safetensors").unlink()
    part = EffectDataset.load_dir(out)
    assert len(part) == 2 and torch.equal(part.effects, full.effects[:2])
    assert part.record["chunks"] == [0]  # which chunks the rows come from
    assert torch.allclose(part.inputs, full.inputs[:2], atol=1e-3)
    resumed = estimate_effects(est, vecs, 2.0, out_dir=out, chunk_size=2, progress=False,
                               store_dtype=torch.float16)  # fmt: skip
    assert torch.equal(resumed.effects, full.effects)

from __future__ import annotations

import json

import pytest
import torch

from sae_ts.artifacts import ArtifactError
from sae_ts.models import to_tokens
from sae_ts.steering import SteeringHook, SteeringVector, add_hooks, steer

HOOK = "blocks.0.hook_resid_post"


def _vecs(d: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g)


def test_steering_changes_logits_and_is_removed(tiny):
    toks = to_tokens(tiny, ["I think that"])
    base = tiny(toks)
    v = _vecs(tiny.cfg.d_model, 1)[0]
    with steer(tiny, v, HOOK, scale=3.0):
        steered = tiny(toks)
    assert not torch.allclose(base, steered)
    assert torch.allclose(base, tiny(toks))
    assert not tiny.hook_dict[HOOK].fwd_hooks


def test_hooks_removed_when_body_raises(tiny):
    v = _vecs(tiny.cfg.d_model, 1)[0]
    other = lambda act, hook: None  # noqa: E731 - a user's hook that must survive
    tiny.hook_dict[HOOK].add_hook(other)
    try:
        with pytest.raises(RuntimeError, match="boom"), steer(tiny, v, HOOK, scale=2.0):
            raise RuntimeError("boom")
        remaining = [h.user_hook for h in tiny.hook_dict[HOOK].fwd_hooks]
        assert remaining == [other]
    finally:
        tiny.reset_hooks()


def test_per_row_batch_equals_single_runs(tiny):
    toks = to_tokens(tiny, ["The weather is"] * 3)
    vecs = _vecs(tiny.cfg.d_model, 3)
    scales = torch.tensor([0.5, 2.0, 4.0])
    with steer(tiny, vecs, HOOK, scale=scales):
        batched = tiny(toks)
    for i in range(3):
        with steer(tiny, vecs[i], HOOK, scale=float(scales[i])):
            single = tiny(toks[i : i + 1])
        assert torch.allclose(batched[i], single[0], atol=1e-5)


def test_positions_semantics(tiny):
    seen = {}

    def grab(act, hook):
        seen["x"] = act.clone()

    toks = to_tokens(tiny, ["one two three four"])
    n = toks.shape[1]
    v = torch.ones(tiny.cfg.d_model)
    with add_hooks(tiny, [(HOOK, grab)]):
        tiny(toks)
    base = seen["x"]
    for positions, first in (("all", 0), ("from_prompt_end", n - 1), (2, 2)):
        with steer(tiny, v, HOOK, scale=1.0, positions=positions):
            with add_hooks(tiny, [(HOOK, grab)]):
                tiny(toks)
        diff = (seen["x"] - base)[0, :, 0]
        assert torch.allclose(diff[first:], torch.ones(n - first)), positions
        assert torch.allclose(diff[:first], torch.zeros(first)), positions


def test_bad_vectors_are_refused(tiny):
    d = tiny.cfg.d_model
    with pytest.raises(ValueError, match="shape"), steer(tiny, torch.ones(d + 1), HOOK):
        pass
    with pytest.raises(ValueError, match="NaN"), steer(tiny, torch.full((d,), float("nan")), HOOK):
        pass
    with pytest.raises(TypeError), steer(tiny, torch.ones(d, dtype=torch.long), HOOK):
        pass
    with (
        pytest.raises(KeyError, match="not in the model"),
        steer(tiny, torch.ones(d), "blocks.9.hook_resid_post"),
    ):
        pass
    with pytest.raises(ValueError, match="rows"), steer(tiny, torch.ones(3, d), HOOK):
        tiny(to_tokens(tiny, ["a", "b"]))
    assert not tiny.hook_dict[HOOK].fwd_hooks
    with pytest.raises(ValueError):
        SteeringHook(torch.ones(d), scales=torch.ones(2))


def test_steering_vector_round_trip_and_refusals(tiny, tmp_path):
    sv = SteeringVector(
        vector=torch.randn(tiny.cfg.d_model), hook_name=HOOK, model_name=tiny.cfg.model_name,
        method="caa", scale=3.0, target={"features": [[1, 1.0]]}, seed=7,
    )  # fmt: skip
    stem = sv.save(tmp_path / "vec")
    assert (tmp_path / "vec.safetensors").exists() and (tmp_path / "vec.json").exists()
    rec = json.loads((tmp_path / "vec.json").read_text())
    assert rec["versions"]["torch"] and rec["seed"] == 7 and rec["hook_name"] == HOOK
    back = SteeringVector.load(stem, model=tiny)
    assert torch.equal(back.vector, sv.vector) and back.target == sv.target and back.scale == 3.0
    toks = to_tokens(tiny, ["hello"])
    with back.applied(tiny):
        a = tiny(toks)
    with steer(tiny, sv.vector, HOOK, scale=3.0):
        b = tiny(toks)
    assert torch.allclose(a, b)
    with pytest.raises(ArtifactError, match="hook"):
        SteeringVector.load(stem, model=tiny, hook_name="blocks.1.hook_resid_post")
    from sae_ts.testing import tiny_model

    other = tiny_model(seed=1, d_model=32, tokenizer=tiny.tokenizer)
    with pytest.raises(ArtifactError, match="d_model"):
        SteeringVector.load(stem, model=other)
    renamed = tiny_model(seed=0, tokenizer=tiny.tokenizer)
    renamed.cfg.model_name = "someone-else"
    with pytest.raises(ArtifactError, match="made for model"):
        SteeringVector.load(stem, model=renamed)

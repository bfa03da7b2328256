"""Loading a model with its SAE: registry checks, hub errors, the one compatibility check."""

from __future__ import annotations

import pytest
import torch

from sae_ts import loading
from sae_ts.errors import HubUnavailableError
from sae_ts.loading import check_pair, check_release
from sae_ts.testing import tiny_sae


def test_registry_checks_are_offline_and_clear():
    check_release("gpt2-small", "gpt2-small-res-jb", "blocks.8.hook_resid_pre")
    with pytest.raises(ValueError, match="unknown sae-lens release"):
        check_release("gpt2-small", "gpt2-small-res-nope", "blocks.8.hook_resid_pre")
    with pytest.raises(ValueError, match="has no SAE"):
        check_release("gpt2-small", "gpt2-small-res-jb", "blocks.99.hook_resid_pre")
    with pytest.raises(ValueError, match="is for model"):
        check_release("gemma-2-2b", "gpt2-small-res-jb", "blocks.8.hook_resid_pre")


def test_load_from_hub_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnavailableError, match="load_default"):
        loading.load("gpt2-small", "gpt2-small-res-jb", "blocks.8.hook_resid_pre")


def test_pair_mismatches_are_refused(tiny):
    good = tiny_sae(tiny.cfg.d_model, "blocks.1.hook_resid_post", d_sae=32)
    check_pair(tiny, good, "blocks.1.hook_resid_post")
    with pytest.raises(ValueError, match="d_in=32"):
        check_pair(
            tiny, tiny_sae(32, "blocks.1.hook_resid_post", d_sae=32), "blocks.1.hook_resid_post"
        )
    with pytest.raises(ValueError, match="not a hook point"):
        check_pair(tiny, good, "blocks.7.hook_resid_post")
    with pytest.raises(ValueError, match="trained on hook"):
        check_pair(tiny, good, "blocks.0.hook_resid_post")


def test_check_pair_defaults_to_the_saes_hook(tiny):
    sae = tiny_sae(tiny.cfg.d_model, "blocks.1.hook_resid_post", d_sae=32)
    assert check_pair(tiny, sae) == "blocks.1.hook_resid_post"
    with pytest.raises(ValueError, match="names no hook_name"):
        check_pair(tiny, tiny_sae(tiny.cfg.d_model, None, d_sae=32))  # type: ignore[arg-type]


def test_gemma_scope_2_release_is_known_offline_and_aliases_resolve():
    # the one-argument swap from the embedded SAE to Gemma Scope 2's: registry checks pass
    # offline for the hub name and TransformerLens's alias alike
    for name in ("google/gemma-3-270m", "gemma-3-270m"):
        check_release(name, "gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_medium")
    with pytest.raises(ValueError, match="is for model"):
        check_release("gpt2-small", "gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_medium")


def test_embedded_gemma_with_a_hub_sae_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnavailableError, match="gemma-scope-2-270m-pt-res"):
        loading.load("gemma-3-270m", "gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_medium")


def test_load_takes_a_model_object_and_an_sae_directory_or_object(tiny, tmp_path):
    hook = "blocks.1.hook_resid_post"
    sae = tiny_sae(tiny.cfg.d_model, hook, d_sae=32, architecture="jumprelu")
    sae.save_model(tmp_path / "sae")
    got = loading.load(tiny, tmp_path / "sae")
    assert got.model is tiny and got.hook_name == hook and got.sae.cfg.d_sae == 32
    assert torch.equal(got.sae.threshold, sae.threshold)
    same = loading.load(tiny, sae)
    assert same.sae is sae and same.layer == 1
    with pytest.raises(ValueError, match="trained on hook"):
        loading.load(tiny, sae, hook_name="blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match="no SAE given"):
        loading.load(tiny)
    with pytest.raises(TypeError, match="HookedTransformer"):
        loading.load(object(), sae)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        loading.load(tiny, tmp_path / "nothing-here")
    with pytest.raises(ValueError, match="sae_id goes with"):
        loading.load(tiny, sae, "some-id")  # type: ignore[arg-type]

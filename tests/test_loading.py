"""Loading a model with its SAE: registry checks, hub errors, the one compatibility check."""

from __future__ import annotations

import pytest

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

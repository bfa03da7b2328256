"""The shared helpers (sae_ts._util, used through their public homes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sae_ts import models
from sae_ts.models import hook_layer
from sae_ts.sae import sink_mask


def test_sink_mask_rules():
    acts = torch.ones(2, 5, 4)
    acts[1, 3] *= 100
    m = sink_mask(acts)
    assert m[:, 0].all() and m[1, 3] and m.sum() == 3
    assert sink_mask(acts, ratio=None).sum() == 2
    flat = sink_mask(acts.reshape(10, 4))  # [n, d]: the norm rule only, no "position 0"
    assert flat.sum() == 1 and flat[8]
    assert sink_mask(acts, reference_norm=1000.0).sum() == 2  # a recorded reference norm
    with pytest.raises(ValueError):
        sink_mask(torch.ones(4))


def test_hook_layer():
    assert hook_layer("blocks.12.hook_resid_post") == 12
    with pytest.raises(ValueError):
        hook_layer("hook_embed")


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SAE_TS_CACHE", str(tmp_path))
    assert models.cache_dir() == Path(tmp_path)

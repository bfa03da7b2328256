"""Activation caches and the cached batch provider."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sae_ts.sae import make_windows
from sae_ts.training import CachedActivationBatches, cache_activations

HOOK = "blocks.1.hook_resid_post"
TEXT = (
    "The river flows through the valley and reaches the sea after many miles. Farmers grow wheat "
    "and barley on its banks, and in spring the water rises over the fields. "
) * 6


def _windows(tiny, n: int = 24) -> torch.Tensor:
    w = make_windows(tiny.tokenizer, [TEXT] * 5, 32, 0)[:n]
    assert w.shape[0] == n
    return w


def test_cached_batches_are_seeded_and_resumable() -> None:
    acts = torch.randn(100, 8).half()
    a = CachedActivationBatches(acts, 16, seed=3)
    seq = [next(a) for _ in range(14)]  # crosses an epoch boundary (6 steps per epoch)
    b = CachedActivationBatches(acts, 16, seed=3, start_step=9)
    assert all(torch.equal(seq[9 + i], next(b)) for i in range(5))
    c = CachedActivationBatches(acts, 16, seed=4)
    assert not torch.equal(seq[0], next(c))
    assert seq[0].dtype == torch.float32
    # Epoch 0 visits distinct rows.
    rows = torch.cat(seq[:6])
    assert torch.unique(rows, dim=0).shape[0] == 96
    with pytest.raises(ValueError):
        CachedActivationBatches(acts, 200, seed=0)


def test_cache_activations_resumes_and_drops_sinks(tiny, tmp_path: Path) -> None:
    win = _windows(tiny)
    out = tmp_path / "acts"
    cache = cache_activations(
        tiny, win, out, HOOK, 1, batch_size=4, chunk_windows=10, progress=False
    )
    paths = cache.chunk_paths()
    assert len(paths) == 3
    data = cache.load_all()
    assert (data["pos"] > 0).all()  # position 0 never cached
    assert data["acts"].dtype == torch.float16
    _, ref = tiny.run_with_cache(win[:4], names_filter=HOOK)
    i = int((data["seq"] == 2).nonzero()[0])
    assert torch.allclose(data["acts"][i].float(), ref[HOOK][2, int(data["pos"][i])], atol=1e-2)
    # Delete one chunk: a rerun recomputes only that one, identically.
    before = load_file(str(paths[1]))
    paths[1].unlink()
    mtime0 = paths[0].stat().st_mtime_ns
    cache_activations(tiny, win, out, HOOK, 1, batch_size=4, chunk_windows=10, progress=False)
    assert paths[0].stat().st_mtime_ns == mtime0
    assert torch.equal(load_file(str(paths[1]))["acts"], before["acts"])
    # A prefix of whole chunks reuses the cache; other text is refused.
    small = cache_activations(tiny, win[:10], out, HOOK, 1, chunk_windows=10, progress=False)
    assert len(small.chunk_paths()) == 1
    with pytest.raises(ValueError, match="different text"):
        cache_activations(tiny, win.flip(0), out, HOOK, 1, chunk_windows=10, progress=False)

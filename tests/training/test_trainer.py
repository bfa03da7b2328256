"""SAE training with sae-lens's trainer: export, resume, config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sae_ts.sae import load_sae
from sae_ts.training import ActivationCache, TrainConfig, export_sae, train_sae
from tests.training.test_activations import HOOK


def test_train_export_and_resume_reproduce(tiny, tmp_path: Path) -> None:
    # Sparse data: each row a positive mix of 4 of 96 random directions, plus a mean.
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(96, 64, generator=g)
    coef = torch.zeros(2048, 96)
    idx = torch.stack([torch.randperm(96, generator=g)[:4] for _ in range(2048)])
    coef.scatter_(1, idx, torch.rand(2048, 4, generator=g) * 2 + 0.5)
    acts = coef @ atoms + torch.randn(64, generator=g) * 3
    root = tmp_path / "train"
    root.mkdir()
    save_file(
        {"acts": acts.half(), "seq": torch.zeros(2048, dtype=torch.int32),
         "pos": torch.ones(2048, dtype=torch.int32)},
        str(root / "chunk_00000.safetensors"),
    )  # fmt: skip
    (root / "meta.json").write_text(json.dumps({"n_chunks": 1, "n_windows": 1}))
    cfg = TrainConfig(
        d_sae=128, k=8, batch_size=128, epochs=3, lr=2e-3, warmup_steps=2, n_checkpoints=2,
        dead_feature_window=5, feature_sampling_window=10, threads=1,
    )  # fmt: skip
    md = {"model_name": "tiny", "hook_name": HOOK, "sink_ratio": 7.0}
    sae1, stats = train_sae(cfg, ActivationCache(root), tmp_path / "ck", md, progress=False)
    assert stats["steps"] == 48
    ckpts = sorted((tmp_path / "ck").iterdir(), key=lambda p: int(p.name))
    assert len(ckpts) == 2
    state1 = {k: v.detach().clone() for k, v in sae1.state_dict().items()}
    out = export_sae(sae1, tmp_path / "exported", {**md, "training": stats})
    loaded = load_sae(out)
    assert type(loaded).__name__ == "TopKSAE"
    assert loaded.cfg.metadata.hook_name == HOOK and loaded.cfg.metadata.training["steps"] == 48
    x = acts[:512]
    with torch.no_grad():
        r = loaded.decode(loaded.encode(x))
    ev = 1 - (r - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert ev > 0.3  # it learned (an untrained SAE is near 0); fp16 storage included
    # Interrupt after the first checkpoint: resuming reproduces the uninterrupted run.
    shutil.rmtree(ckpts[1])
    sae2, _ = train_sae(cfg, ActivationCache(root), tmp_path / "ck", md, progress=False)
    state2 = sae2.state_dict()
    assert state1.keys() == state2.keys()
    assert all(torch.allclose(state1[k], state2[k], atol=1e-5) for k in state1)
    assert not torch.allclose(state1["W_enc"], loaded.W_enc, atol=1e-3)  # export folded norms


def test_train_config_validation() -> None:
    with pytest.raises(ValueError):
        TrainConfig(architecture="relu")
    with pytest.raises(ValueError):
        TrainConfig(k=0)
    with pytest.raises(ValueError):
        TrainConfig(d_sae=16, k=32)
    assert TrainConfig().hook_name == "blocks.12.hook_resid_post"
    assert TrainConfig(seed=1).run_tag() != TrainConfig(seed=2).run_tag()
    assert TrainConfig(threads=1).run_tag() == TrainConfig(threads=2).run_tag()

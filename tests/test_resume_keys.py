"""Resume keys are the same on every machine and checkout.

Each key (effect estimation, comparison tasks, reliability datasets) is computed in two
differently laid-out copies of the inputs, with a float computed at run time perturbed in its last
bit: the key must not change. It must change when a setting that decides the result changes.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch

import sae_ts.experiments.compare.run as compare_run
import sae_ts.experiments.reliability.report as report
from sae_ts.effect_model import LinearEffectModel
from sae_ts.effects import EffectConfig, EffectEstimator, _manifest_key, estimate_effects
from sae_ts.experiments.compare.config import CompareConfig
from sae_ts.experiments.compare.tasks import load_task
from sae_ts.testing import tiny_sae

HOOK = "blocks.1.hook_resid_post"


def _layouts(tmp_path: Path, src: Path) -> tuple[Path, Path]:
    """The same file or folder at two unrelated places (two checkouts, ../shared elsewhere)."""
    a, b = tmp_path / "checkout-one" / "shared" / src.name, tmp_path / "elsewhere" / "x" / src.name
    for dst in (a, b):
        dst.parent.mkdir(parents=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return a, b


class _Found(Exception):
    pass


def test_reliability_dataset_keys_ignore_paths_and_run_time_floats(
    tiny, tmp_path, monkeypatch, kindness_persona
):
    one, two = _layouts(tmp_path, kindness_persona)

    def found(path, key, what="checkpoint"):  # stop at the checkpoint look-up: the key is known
        raise _Found(path.name, key)

    monkeypatch.setattr(report, "read_checkpoint", found)

    def key_of(path: Path, norm: float, **kw) -> tuple[str, str]:
        monkeypatch.setattr(report, "typical_residual_norm", lambda m, h: norm)
        try:
            report.run_reliability_multi(tiny, [path], HOOK, {"v": "random"},
                                         checkpoint_dir=tmp_path / "ck", **kw)  # fmt: skip
        except _Found as e:
            return e.args
        raise AssertionError("no checkpoint was looked up")

    norm = 143.74534606933594
    first = key_of(one, norm, max_items=8, seed=0)
    assert key_of(two, math.nextafter(norm, 0), max_items=8, seed=0) == first
    assert key_of(one, norm, max_items=8, seed=1) != first  # a setting that decides: a new key
    assert (
        key_of(one, norm, max_items=8, seed=0, residual_norm=100.0) != first
    )  # given, not computed


def test_comparison_task_keys_ignore_paths_and_run_time_floats(tmp_path, space_task):
    sae = tiny_sae(64, HOOK, d_sae=16)
    g = torch.Generator().manual_seed(0)
    LinearEffectModel(torch.randn(64, 16, generator=g), torch.zeros(16)).save(tmp_path / "em")
    em_one, em_two = (_layouts(tmp_path / f"em{i}", tmp_path / "em.safetensors")[i] for i in (0, 1))
    for p in (em_one, em_two):
        shutil.copy(tmp_path / "em.json", p.with_suffix(".json"))
    task_one, task_two = _layouts(tmp_path, space_task)
    cfg = CompareConfig.budget("smoke")
    keys = set()
    for em_path, task_dir in ((em_one, task_one), (em_two, task_two)):
        em = LinearEffectModel.load(em_path.with_suffix(""))
        run_key = compare_run._run_key(cfg, ["caa", "targeted"], "tiny", sae, em, True, None)
        keys.add(compare_run._task_key(run_key, load_task(task_dir), None))
    assert len(keys) == 1
    other = CompareConfig.budget("smoke", targets="effect")
    run_key = compare_run._run_key(other, ["caa", "targeted"], "tiny", sae, em, True, None)
    assert compare_run._task_key(run_key, load_task(task_one), None) not in keys
    # a judge factory without a key is never resumed (its repr holds a memory address)
    a = compare_run._run_key(cfg, ["caa"], "tiny", sae, None, True, lambda *x: x)
    b = compare_run._run_key(cfg, ["caa"], "tiny", sae, None, True, lambda *x: x)
    assert a["judges"] != b["judges"]


def test_effect_campaign_keys_ignore_the_output_folder(tiny, tmp_path):
    sae = tiny_sae(64, HOOK, d_sae=16)
    est = EffectEstimator(tiny, sae, config=EffectConfig(rollouts=1, seq_len=8,
                                                          prompts=("I think",)), seed=0)  # fmt: skip
    v = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    keys = []
    for out in (tmp_path / "a" / "fx", tmp_path / "b" / "deeper" / "fx"):
        estimate_effects(est, v, 3.0, out_dir=out, progress=False)
        keys.append((out / "manifest.json").read_text())
    import json

    assert json.loads(keys[0])["key"] == json.loads(keys[1])["key"]
    assert _manifest_key(EffectConfig(), 0, {}) != _manifest_key(EffectConfig(), 1, {})

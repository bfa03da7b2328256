"""Effect estimation on a local Ray cluster: the same numbers as one process, whatever happens.

The cluster is started here (``ray.init(num_cpus=2)``) and serves every test of the module; the
executors' actors load the tiny model (``sae_ts.testing.tiny_loaded``) once each.
"""

from __future__ import annotations

import functools
import json
import sys

import pytest
import torch

from sae_ts.effect_model import LinearEffectModel
from sae_ts.effects import (
    EffectConfig,
    EffectEstimator,
    _EstimatorSpec,
    estimate_effects,
    random_directions,
    sae_fingerprint,
)
from sae_ts.errors import ConfigError, MissingExtraError
from sae_ts.executors import LocalExecutor, RayExecutor
from sae_ts.experiments.compare.run import CompareConfig, _run_task, _TaskRunner, load_task
from sae_ts.targets import latent_density
from sae_ts.testing import tiny_loaded

# batch_rows 5: a chunk is measured in several batches, one of them small (other BLAS kernels)
CFG = EffectConfig(prompts=("", "I think", "The weather"), seq_len=8, rollouts=2,
                   baseline_multiplier=2, batch_rows=5)  # fmt: skip
COUPLED = EffectConfig(**{**CFG.to_dict(), "coupled": True})


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def two_workers(ray_cluster):
    with RayExecutor(tiny_loaded, workers=2) as ex:
        yield ex


@pytest.fixture
def one_thread():
    """Ray workers run one torch thread each (cpus_per_worker=1); so does the reference here."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _estimate(cfg, executor=None, **kw):
    model, sae, _ = tiny_loaded()
    est = EffectEstimator(model, sae, config=cfg, seed=7)
    vecs = random_directions(8, model.cfg.d_model, seed=1)
    kw = {"chunk_size": 2, "progress": False, **kw}
    return estimate_effects(est, vecs, 3.0, executor=executor, **kw)


def _same(a, b) -> bool:
    return all(
        torch.equal(getattr(a, k), getattr(b, k))
        for k in ("inputs", "scales", "effects", "baseline")
    )


def test_one_and_two_workers_equal_one_process_bit_for_bit(ray_cluster, one_thread, request):
    here = {cfg: _estimate(cfg) for cfg in (CFG, COUPLED)}
    assert not _same(here[CFG], here[COUPLED])  # the check can fail
    with RayExecutor(tiny_loaded, workers=1) as one:  # before the 2 workers take both CPUs
        for cfg in (CFG, COUPLED):
            assert _same(_estimate(cfg, one), here[cfg]), cfg.coupled
    two = request.getfixturevalue("two_workers")
    for cfg in (CFG, COUPLED):
        assert _same(_estimate(cfg, two), here[cfg]), cfg.coupled
        assert _same(_estimate(cfg, LocalExecutor()), here[cfg])
    with pytest.raises(ConfigError, match="room for 0 workers"):  # no CPU left: refused, no hang
        RayExecutor(tiny_loaded, workers=1).start()


class _KillAfterFirstResult:
    """Wraps an executor; kills one of its workers (mid-job) once the first result is back."""

    in_process = False

    def __init__(self, ex: RayExecutor) -> None:
        self.ex, self.killed = ex, None

    def imap(self, fn, jobs, **kw):
        for k, item in enumerate(self.ex.imap(fn, jobs, **kw)):
            if k == 0:
                self.killed = self.ex.actors[0]
                self.ex._ray.kill(self.killed, no_restart=True)
            yield item


def test_a_killed_worker_loses_nothing_and_changes_nothing(
    ray_cluster, two_workers, one_thread, tmp_path
):
    cfg = EffectConfig(**{**CFG.to_dict(), "seq_len": 24, "rollouts": 4})  # jobs long enough
    here = _estimate(cfg, chunk_size=1)
    killer = _KillAfterFirstResult(two_workers)
    out = tmp_path / "run"
    got = _estimate(cfg, killer, chunk_size=1, out_dir=out)
    assert killer.killed is not None and two_workers.actors[0] is not killer.killed  # replaced
    assert _same(got, here)
    assert len(list(out.glob("chunk_*.safetensors"))) == 8
    # a driver restart resumes from the finished chunks, on the workers
    for f in out.glob("chunk_0000[36].*"):
        f.unlink()
    assert _same(_estimate(cfg, two_workers, chunk_size=1, out_dir=out), here)


def test_a_worker_with_another_model_is_refused():
    model, sae, _ = tiny_loaded()
    spec = _EstimatorSpec.of(EffectEstimator(model, sae, config=CFG))
    assert spec(tiny_loaded()).seed == 0
    with pytest.raises(ConfigError, match="driver's load"):
        spec(tiny_loaded(seed=1))


def test_without_ray_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(MissingExtraError, match=r"sae-ts\[ray\]"):
        RayExecutor(functools.partial(tiny_loaded, seed=0), workers=2)


def _tasks(tmp_path):
    from tests.experiments.compare.test_compare import write_task
    from tests.judges.test_offline import NEG, POS

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write_task(tmp_path / "a")
    b = write_task(tmp_path / "b", pos=NEG, neg=POS)  # the opposite concept
    # a: a manual target (no tiny-SAE latent tells its halves apart); b: selected latents
    return [(load_task(a), {3: 1.0, 7: 0.5}), (load_task(b), None)]


def _runner(loaded=None):
    """What run_comparison ships to its workers, for the tiny model."""
    from tests.judges.test_offline import NEG, POS

    model, sae, hook = loaded or tiny_loaded()
    g = torch.Generator().manual_seed(0)
    em = LinearEffectModel(
        torch.randn(model.cfg.d_model, sae.cfg.d_sae, generator=g), torch.zeros(sae.cfg.d_sae)
    )
    cfg = CompareConfig.budget("smoke", n_features=2, max_density=0.5, targets="input")  # dense out
    density = latent_density(model, sae, hook, texts=POS + NEG, window=16)
    return _TaskRunner(em, ("caa", "sae", "targeted"), cfg, "cpu", None, False, 10.0, density,
                       model.cfg.model_name, sae_fingerprint(sae))  # fmt: skip


def _compare(jobs, executor=None):
    """What run_comparison does with its executor, on the tiny model."""
    runner = _runner()
    ex = executor or LocalExecutor()
    return dict(ex.imap(_run_task, jobs, local=runner(tiny_loaded()), remote=runner))


def test_compare_tasks_on_two_workers_equal_one_process(
    ray_cluster, two_workers, one_thread, tmp_path
):
    jobs = _tasks(tmp_path)
    here = _compare(jobs)
    assert here[0]["features"] != here[1]["features"]  # two tasks, two records
    assert [r["features_source"] for r in here.values()] == ["override", "selectivity"]
    assert here[1]["judge"]["auroc_build_texts"] >= 0  # the embedding judge, built on the worker
    there = _compare(jobs, two_workers)
    assert json.dumps(there, sort_keys=True) == json.dumps(here, sort_keys=True)


def test_a_compare_worker_with_another_model_is_refused():
    runner = _runner()
    assert runner(tiny_loaded()).runner is runner
    with pytest.raises(ConfigError, match="another model or SAE"):
        runner(tiny_loaded(seed=1))


def test_cli_ray_flags_fail_fast_with_a_clear_error(monkeypatch, capsys, tmp_path):
    from sae_ts.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)
    for cmd in (["estimate", "--out", str(tmp_path)], ["compare", "--task", str(tmp_path)]):
        assert main([*cmd, "--ray", "--workers", "2"]) == 1
        assert "pip install 'sae-ts[ray]'" in capsys.readouterr().err
        assert main([*cmd, "--workers", "2"]) == 1
        assert "need --ray" in capsys.readouterr().err

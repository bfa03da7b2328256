from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import sae_ts.experiments.compare.judges as compare_judges
import sae_ts.experiments.compare.run as comparison
from sae_ts.effect_model import LinearEffectModel
from sae_ts.experiments.compare.run import (
    CompareConfig,
    compare_task,
    load_task,
    paired_generations,
    parse_feature_overrides,
    split_roles,
)
from sae_ts.experiments.compare.stats import aggregate, paired_comparison, split_halves
from sae_ts.judges.offline import load_embedder
from sae_ts.testing import tiny_sae
from tests.judges.test_offline import CRITERION, NEG, POS

HOOK = "blocks.1.hook_resid_post"


def write_task(tmp_path, pos=POS, neg=NEG):
    d = tmp_path / "beach"
    d.mkdir()
    (d / "act_steer.json").write_text(json.dumps({"pos": pos, "neg": neg}))
    (d / "criteria.json").write_text(
        json.dumps([{"name": "Beach", "score": CRITERION, "coherence": "The text is coherent."}])
    )
    return d


@pytest.fixture(scope="module")
def embedder():
    return load_embedder()


def test_load_task_and_errors(tmp_path, space_task):
    t = load_task(write_task(tmp_path))
    assert t.name == "Beach" and len(t.pos) == 6 and t.score_criterion == CRITERION
    assert load_task(space_task).name == "space"
    with pytest.raises(FileNotFoundError, match=r"criteria\.json"):
        (tmp_path / "beach" / "criteria.json").unlink()
        load_task(tmp_path / "beach")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "act_steer.json").write_text(json.dumps({"pos": [], "neg": ["x"]}))
    (bad / "criteria.json").write_text("[]")
    with pytest.raises(ValueError, match="non-empty"):
        load_task(bad)


def test_split_roles_is_disjoint_complete_and_seeded(space_task):
    task = load_task(space_task)
    r = split_roles(task, seed=0)
    for side in ("pos", "neg"):
        build, judge = getattr(r.build, side), getattr(r.judge, side)
        assert not set(build) & set(judge)
        assert sorted(build + judge) == sorted(getattr(task, side))
        assert len(build) == len(judge) == 4
    assert split_roles(task, seed=0) == r and split_roles(task, seed=1) != r
    # a repeated text stays in one half; a text on both sides, or too few texts, is refused
    dup = comparison.Task("d", ["a", "b", "a ", "c"], ["x", "y"], "c", "c")
    rd = split_roles(dup)
    assert not set(rd.build.pos) & set(rd.judge.pos) and len(rd.build.pos + rd.judge.pos) == 3
    with pytest.raises(ValueError, match="positive and negative"):
        split_roles(comparison.Task("d", ["a", "b"], ["a", "y"], "c", "c"))
    with pytest.raises(ValueError, match=">= 2"):
        split_roles(comparison.Task("d", ["a"], ["x", "y"], "c", "c"))


def test_paired_generations_share_noise_per_sample_index(tiny):
    cfg = CompareConfig(samples=4, max_new_tokens=5, prompts=("I think", "The"), batch_rows=64)
    g = torch.Generator().manual_seed(0)
    v = torch.randn(2, tiny.cfg.d_model, generator=g)
    vecs = torch.stack([torch.zeros(tiny.cfg.d_model), v[0], v[1], torch.zeros(tiny.cfg.d_model)])
    scales = torch.tensor([0.0, 30.0, 30.0, 0.0])
    a = paired_generations(tiny, HOOK, vecs, scales, cfg).texts
    assert a[0] == a[3]  # two unsteered conditions: same prompt and noise at every index
    assert a[1] != a[0] and a[1] != a[2]
    assert all(t.startswith("I think") for t in a[0][0::2]) and a[0][1].startswith("The")
    # batching does not change what a sample is
    small = CompareConfig(samples=4, max_new_tokens=5, prompts=("I think", "The"), batch_rows=3)
    assert paired_generations(tiny, HOOK, vecs, scales, small).texts == a
    # another stream gives other samples
    assert paired_generations(tiny, HOOK, vecs[:1], scales[:1], cfg, stream=1).texts[0] != a[0]


def test_paired_generations_record_features_read_before_steering(tiny):
    """The feature means equal an unsteered re-run of the generated tokens (causality)."""
    from sae_ts.sae import sink_positions

    sae = tiny_sae(tiny.cfg.d_model, HOOK, d_sae=32)
    cfg = CompareConfig(samples=3, max_new_tokens=4)
    v = torch.randn(1, tiny.cfg.d_model, generator=torch.Generator().manual_seed(1))
    run = paired_generations(tiny, HOOK, torch.cat([torch.zeros_like(v), v]),
                             torch.tensor([0.0, 40.0]), cfg, sae=sae)  # fmt: skip
    assert run.features is not None and run.features.shape == (2, 3, 32)
    for c in range(2):
        for i in range(3):
            toks = run.tokens[c][i][None]  # the generated tokens, re-run unsteered
            _, cache = tiny.run_with_cache(toks, names_filter=HOOK)
            acts = cache[HOOK]
            keep = ~sink_positions(sae, acts)[0]  # position 0, and sinks (none here)
            want = sae.encode(acts[0][keep]).mean(0)
            torch.testing.assert_close(run.features[c, i], want, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="trained on hook"):
        paired_generations(tiny, "blocks.0.hook_resid_post", v, torch.ones(1), cfg, sae=sae)


def _synthetic(n=64, seed=0):
    """Per-sample noise shared by every method (paired), small true differences."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 1, n)  # e.g. how on-topic sample i's noise stream happens to be
    coh = np.full(n, 0.8)
    beh = {
        "caa": {0.5: np.clip(base + 0.10, 0, 1), 1.0: np.clip(base + 0.2, 0, 1)},
        "sae": {0.5: np.clip(base + 0.05, 0, 1), 1.0: np.clip(base + 0.08, 0, 1)},
    }
    cohs = {"caa": {0.5: coh, 1.0: coh * 0.2}, "sae": {0.5: coh, 1.0: coh}}
    return beh, cohs, (base, coh)


def test_paired_comparison_chooses_on_one_half_and_pairs_the_cis():
    beh, coh, un = _synthetic()
    res = paired_comparison(beh, coh, un, seed=0, bootstrap=500)
    a, b = res["split"]["selection"], res["split"]["evaluation"]
    assert not set(a) & set(b) and len(a) + len(b) == 64
    assert res["caa"]["norm_fraction"] == 0.5 and res["sae"]["norm_fraction"] == 1.0
    for row in ("caa", "sae", "unsteered"):
        r = res[row]
        assert r["ci"][0] <= r["score"] <= r["ci"][1]
        assert len(r["heldout"]["behavior"]) == len(b)
    expect = np.mean(np.clip(un[0] + 0.1, 0, 1)[b]) * 0.8
    assert res["caa"]["score"] == pytest.approx(expect)
    # the shared per-sample noise cancels in paired differences: their CIs are far narrower
    d = res["sae"]["vs_caa"]
    width_single = res["sae"]["ci"][1] - res["sae"]["ci"][0]
    assert d["ci"][1] - d["ci"][0] < width_single / 4
    assert d["ci"][1] < 0 < res["caa"]["vs_unsteered"]["ci"][0]
    assert res["unsteered"]["vs_caa"]["diff"] == pytest.approx(-res["caa"]["vs_unsteered"]["diff"])
    # an unsteered row that scores best is chosen (norm 0 is a candidate)
    worse = {"caa": {0.5: np.zeros(64)}}
    r0 = paired_comparison(worse, {"caa": {0.5: np.ones(64)}}, un, seed=0, bootstrap=50)
    assert r0["caa"]["norm_fraction"] == 0.0 and r0["caa"]["best_steered_fraction"] == 0.5
    with pytest.raises(ValueError):
        paired_comparison({"caa": {0.5: np.ones(3)}}, {"caa": {0.5: np.ones(3)}}, un)
    with pytest.raises(ValueError):
        split_halves(1, 0)


def test_aggregate_means_tasks_with_paired_cis():
    recs = {}
    for k in range(3):
        beh, coh, un = _synthetic(seed=k)
        recs[f"t{k}"] = paired_comparison(beh, coh, un, seed=k, bootstrap=50)
    agg = aggregate(recs, ["unsteered", "caa", "sae"], bootstrap=500)
    assert agg["caa"]["score"] == pytest.approx(np.mean([r["caa"]["score"] for r in recs.values()]))
    assert agg["sae"]["vs_caa"]["ci"][1] < 0
    assert agg["caa"]["ci"][0] <= agg["caa"]["score"] <= agg["caa"]["ci"][1]


def test_parse_feature_overrides():
    assert parse_feature_overrides(["wedding=4230,17:0.5", "12"]) == {
        "wedding": {4230: 1.0, 17: 0.5},
        "*": {12: 1.0},
    }
    with pytest.raises(ValueError, match="not a feature id"):
        parse_feature_overrides(["wedding=x"])
    with pytest.raises(ValueError, match="no latent"):
        parse_feature_overrides(["wedding="])
    with pytest.raises(ValueError, match="given twice"):
        parse_feature_overrides(["wedding=1", "wedding=2"])


def _spy(monkeypatch, module, name, log, key):
    real = getattr(module, name)

    def wrapped(*a, **kw):
        log[key] = a
        return real(*a, **kw)

    monkeypatch.setattr(module, name, wrapped)


def test_no_text_builds_and_judges(tiny, tmp_path, monkeypatch, embedder, space_task):
    """CAA and the target latents see only build-role texts; the behaviour judge only judge-role
    texts; the two sets are disjoint and together the task's texts."""
    sae = tiny_sae(tiny.cfg.d_model, HOOK, d_sae=32)
    task = load_task(space_task)
    seen: dict[str, tuple] = {}
    _spy(monkeypatch, comparison, "caa_vector", seen, "caa")
    _spy(monkeypatch, comparison, "choose_targets", seen, "targets")
    _spy(monkeypatch, compare_judges, "EmbeddingBehaviorJudge", seen, "judge")
    cfg = CompareConfig.budget("smoke")
    rec = compare_task(tiny, sae, HOOK, task, None, ["caa", "sae"], cfg, embedder=embedder,
                       norm_unit=10.0)  # fmt: skip
    assert rec["judge"]["auroc_build_texts"] >= 0  # the judge scores build texts only to be checked
    built = set(seen["caa"][1]) | set(seen["caa"][2]) | set(seen["targets"][3])
    built |= set(seen["targets"][4])
    judged = set(seen["judge"][0]) | set(seen["judge"][1])
    assert built and judged and not built & judged
    assert built | judged == set(task.pos) | set(task.neg)
    roles = rec["roles"]
    assert set(roles["build"]["pos"] + roles["build"]["neg"]) == built
    assert set(roles["judge"]["pos"] + roles["judge"]["neg"]) == judged


def test_compare_task_end_to_end_on_a_tiny_model(tiny, tmp_path, embedder, space_task):
    sae = tiny_sae(tiny.cfg.d_model, HOOK, d_sae=32)
    g = torch.Generator().manual_seed(0)
    em = LinearEffectModel(torch.randn(tiny.cfg.d_model, 32, generator=g), torch.zeros(32))
    task = load_task(space_task)
    cfg = CompareConfig.budget("smoke", samples=6, validation_samples=8)
    val = compare_judges.offline_validators(embedder)
    rec = compare_task(tiny, sae, HOOK, task, em, cfg=cfg, embedder=embedder,
                       out_dir=tmp_path / "out", validators=val, norm_unit=10.0,
                       features={3: 2.0, 5: 1.0})  # fmt: skip
    assert [f["latent"] for f in rec["features"]] == [3, 5]
    assert sum(f["weight"] ** 2 for f in rec["features"]) == pytest.approx(1.0)
    assert rec["features_source"] == "override" and "contexts" in rec["features"][0]
    un = rec["unsteered"]
    assert un["norm_fraction"] == 0.0 and un["ci"][0] <= un["score"] <= un["ci"][1]
    for m in ("caa", "sae", "sae_ts", "targeted", "targeted_span", "targeted_caa", "fgaa"):
        r = rec[m]
        assert 0 <= r["score"] <= 1 and r["ci"][0] <= r["score"] <= r["ci"][1]
        assert r["norm_fraction"] in r["curve"]["norm_fraction"]
        # norm 0 of every curve is the one shared unsteered row
        assert r["curve"]["norm_fraction"][0] == 0.0
        assert r["curve"]["behavior"][0] == rec["caa"]["curve"]["behavior"][0]
        assert "vs_unsteered" in r and (m == "caa" or "vs_caa" in r)
        eff = r["effect"]
        assert eff["rollouts"] == 3 and eff["norm_fraction"] > 0  # the evaluation half
        assert eff["target_share_ci"][0] <= eff["target_share"] <= eff["target_share_ci"][1]
        assert 0 <= eff["target_share"] <= 1 and len(r["examples"]) == 3
        assert len(eff["target_share_curve"]["target_share"]) == 2
    v = rec["validation"]["criterion_embedding"]
    assert v["n"] == 8 and -1 <= v["spearman"] <= 1 and "method" in rec["validation"]
    assert rec["judge"]["auroc_build_texts"] >= 0
    # the prompting row: judged like the rest, paired by sample, no norm to choose
    p = rec["prompt"]
    assert p["norm_fraction"] is None and "vs_caa" in p and "vs_unsteered" in p
    assert p["ci"][0] <= p["score"] <= p["ci"][1] and len(p["heldout"]["behavior"]) == 3
    assert "Always talk about" in p["instruction"] and task.name in p["instruction"]
    assert all(ex.startswith("I think") and "Always talk" not in ex for ex in p["examples"])
    # FGAA aims at its own weighted target; the others at the override
    assert rec["fgaa_target"]["raise"] and rec["selection"]["method"] == "override"
    assert rec["tokens_generated"] == (1 + 7 * 2 + 1 + 1) * 6 * 6
    assert (tmp_path / "out" / "saets_space_sweep.png").exists()


def test_task_key_changes_with_everything_that_decides_the_record():
    task = comparison.Task("t", ["a pos text"], ["a neg text"], "score", "coherence")
    base = comparison._task_key({"seed": 0}, task, None)
    assert base == comparison._task_key({"seed": 0}, task, None)  # deterministic
    other_texts = comparison.Task("t", ["another pos text"], ["a neg text"], "score", "coherence")
    assert comparison._task_key({"seed": 0}, other_texts, None) != base
    assert comparison._task_key({"seed": 1}, task, None) != base  # protocol
    assert comparison._task_key({"seed": 0}, task, {3: 1.0}) != base  # manual target
    assert comparison._checkpoint_path(Path("out"), base) == Path(f"out/tasks/{base[:16]}.json")


def test_targeted_caa_row_is_targeted_anchored_on_the_caa_vector(tiny, space_task):
    """``targeted_caa``: the solver with the build half's CAA vector as its anchor; the CAA
    vector is built once and is also the ``caa`` row; the row is a default one."""
    from sae_ts.baselines import caa_vector
    from sae_ts.experiments.compare.run import DEFAULT_METHODS, METHODS, build_vectors
    from sae_ts.solver import Target, solve_with_info

    sae = tiny_sae(tiny.cfg.d_model, HOOK, d_sae=32)
    g = torch.Generator().manual_seed(1)
    em = LinearEffectModel(torch.randn(tiny.cfg.d_model, 32, generator=g), torch.zeros(32))
    build = split_roles(load_task(space_task), 0).build
    tgt = Target.of({3: 1.0, 5: 0.5})
    got = build_vectors(tiny, sae, build, HOOK, em, tgt, ["caa", "targeted", "targeted_caa"])
    caa = caa_vector(tiny, build.pos, build.neg, HOOK, positions="all")
    assert torch.equal(got["caa"], caa)
    v, info = solve_with_info(em, tgt, "targeted", anchor=caa)
    assert torch.equal(got["targeted_caa"], v)
    c = caa / caa.norm()
    # the anchor pulls the solution towards CAA
    assert info["anchor_cosine"] > float(got["targeted"] @ c)
    assert "targeted_caa" in METHODS and "targeted_caa" in DEFAULT_METHODS

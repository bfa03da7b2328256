from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from sae_ts.cli import build_parser, main


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sub.choices, "no subcommands registered"
    for name in sub.choices:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert "usage: sae-ts " + name in capsys.readouterr().out


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "sae_ts.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "demo" in out.stdout


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out


def test_parse_features():
    from sae_ts.cli.common import parse_features

    assert parse_features("12:1.0, 45:0.5,7") == {12: 1.0, 45: 0.5, 7: 1.0}
    assert parse_features(None) == {}
    with pytest.raises(ValueError, match="not a feature id"):
        parse_features("x:1")


def test_stage_commands_are_registered() -> None:
    parser = build_parser()
    a = parser.parse_args(["train-sae", "--seed", "3", "--k", "48", "--extract-only"])
    assert a.seed == 3 and a.k == 48 and a.extract_only
    a = parser.parse_args(["sae-eval", "--sae", "x", "--texts", "heldout"])
    assert a.sae == "x" and a.texts == ["heldout"] and a.device == "cpu"
    a = parser.parse_args(["features", "--out", "o"])
    assert a.out == "o" and a.n_top == 10


def test_train_flags_are_generated_from_train_config() -> None:
    import dataclasses

    from sae_ts.cli.train import train_config_from_args
    from sae_ts.training import TrainConfig

    parser = build_parser()
    assert train_config_from_args(parser.parse_args(["train-sae"])) == TrainConfig()
    flags = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "extra"]
    a = parser.parse_args(["train-sae", "--aux-coefficient", "0.5", "--architecture", "batchtopk"])
    cfg = train_config_from_args(a)
    assert cfg.aux_loss_coefficient == 0.5 and cfg.architecture == "batchtopk"
    # --model picks the model's preset; other flags still override it
    gemma = train_config_from_args(parser.parse_args(["train-sae", "--model", "gemma-3-270m"]))
    assert gemma == TrainConfig.for_model("gemma-3-270m")
    assert gemma.architecture == "jumprelu" and gemma.sink_ratio == 4.0 and gemma.d_sae >= 4096
    a = parser.parse_args(["train-sae", "--model", "gemma-3-270m", "--d-sae", "4096"])
    assert train_config_from_args(a).d_sae == 4096 and train_config_from_args(a).target_l0 == 45
    help_text = parser._subparsers._group_actions[0].choices["train-sae"].format_help()
    assert all(f"--{name.replace('_', '-')}" in help_text for name in flags)
    with pytest.raises(SystemExit):
        parser.parse_args(["train-sae", "--architecture", "relu"])


def test_model_flags_are_one_set_defaulting_to_cpu() -> None:
    parser = build_parser()
    for cmd in (["estimate", "--out", "o"], ["find-features"], ["reliability", "--dataset", "d"]):
        a = parser.parse_args(cmd)
        assert a.device == "cpu" and a.dtype == "float32" and a.model is None, cmd
        assert a.backend == "hooked", cmd
    assert parser.parse_args(["sae-eval", "--device", "cuda"]).device == "cuda"


def test_only_deliberate_errors_become_one_line(monkeypatch, capsys) -> None:
    from sae_ts.cli import core
    from sae_ts.errors import ConfigError

    def deliberate(args):
        raise ConfigError("a clear message")

    monkeypatch.setattr(core, "_cmd_fit", deliberate)
    assert main(["fit", "--effects", "e", "--out", "o"]) == 1
    assert "a clear message" in capsys.readouterr().err

    def failure(args):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(core, "_cmd_fit", failure)
    with pytest.raises(RuntimeError, match="out of memory"):  # keeps its traceback
        main(["fit", "--effects", "e", "--out", "o"])


def test_hub_arguments_must_come_together(capsys):
    assert main(["find-features", "--model", "gpt2-small", "--pos", "a", "--neg", "b"]) == 1
    assert "name its SAE with --sae-release" in capsys.readouterr().err
    argv = ["find-features", "--sae-release", "gpt2-small-res-jb", "--pos", "a", "--neg", "b"]
    assert main(argv) == 1
    assert "go together" in capsys.readouterr().err


def test_model_flag_takes_embedded_keys(monkeypatch):
    """--model smollm2-135m / gemma-3-270m load the embedded model with its shipped SAE;
    with --sae-release/--sae-id the embedded model is paired with a hub SAE."""
    import argparse

    from sae_ts.cli import common

    calls = []
    monkeypatch.setattr(common, "load_default", lambda **kw: calls.append(("default", kw)))
    monkeypatch.setattr(common, "load", lambda *a, **kw: calls.append(("load", a)))

    def ns(**kw):
        base = dict(model=None, sae_release=None, sae_id=None, sae=None, device="cpu",
                    dtype="float32")  # fmt: skip
        return argparse.Namespace(**{**base, **kw})

    common.load_from_args(ns(model="gemma-3-270m"))
    common.load_from_args(ns())
    rel, sid = "gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_medium"
    common.load_from_args(ns(model="gemma-3-270m", sae_release=rel, sae_id=sid))
    common.load_from_args(ns(model="gemma-3-270m", sae="some/dir"))
    assert calls[0] == (
        "default",
        {"device": "cpu", "dtype": torch.float32, "model": "gemma-3-270m", "backend": "hooked"},
    )
    assert calls[1][1]["model"] == "smollm2-135m"
    common.load_from_args(ns(backend="bridge"))
    assert calls[4][1]["backend"] == "bridge"
    assert calls[2] == ("load", ("gemma-3-270m", rel, sid))
    assert calls[3] == ("load", ("gemma-3-270m", "some/dir"))


@pytest.mark.slow
def test_core_pipeline_end_to_end_on_the_real_model(tmp_path, capsys):
    """estimate -> fit -> solve -> measure through the CLI, on a tiny budget."""
    fx = tmp_path / "fx"
    common = ["--prompt", "I think", "--prompt", "", "--seq-len", "8", "--rollouts", "1"]
    assert (
        main(
            [
                "estimate",
                "--out",
                str(fx),
                "--n",
                "12",
                "--scale-fraction",
                "0.42",
                "--chunk-size",
                "6",
                *common,
            ]
        )
        == 0
    )
    assert (fx / "effects.safetensors").exists() and (fx / "chunk_00001.safetensors").exists()
    # the default scale rule: a fraction of the typical per-token norm (~143.7 at layer 12)
    assert "x the per-token residual norm" in capsys.readouterr().out
    assert 55 < json.loads((fx / "manifest.json").read_text())["scale"] < 65
    assert (
        main(
            [
                "fit",
                "--effects",
                str(fx / "effects"),
                "--out",
                str(tmp_path / "em"),
                "--holdout",
                "3",
            ]
        )
        == 0
    )
    assert "held-out R²" in capsys.readouterr().out
    # a chunk directory, its first N vectors, another fit method
    fit8 = ["--out", str(tmp_path / "em8"), "--holdout", "2", "--max-vectors", "8"]
    assert main(["fit", "--effects", str(fx), *fit8, "--method", "ridge_per_feature"]) == 0
    assert "ridge_per_feature" in capsys.readouterr().out
    assert json.loads((tmp_path / "em8.json").read_text())["fit"]["n_train"] == 6
    # the disruption term: the CLI loads the campaign's model (from the record) to measure z
    emd = ["--out", str(tmp_path / "emd"), "--holdout", "3", "--method", "ridge_disruption"]
    assert main(["fit", "--effects", str(fx), *emd]) == 0
    assert "next-token KL of 12 vectors" in capsys.readouterr().out
    rec = json.loads((tmp_path / "emd.json").read_text())
    assert rec["kind"] == "disruption_effect_model" and rec["disruption"]["prompts"] == ["I think"]
    assert main(["fit", "--effects", str(fx), *emd, "--model", "gemma-3-270m"]) == 1
    assert "measured on 'SmolLM2-135M-Instruct', not on --model" in capsys.readouterr().err
    # the first-token prior: the CLI loads the campaign's model and SAE to measure it
    emf = ["--out", str(tmp_path / "emf"), "--holdout", "3", "--method", "ridge_first_token"]
    assert main(["fit", "--effects", str(fx), *emf]) == 0
    assert "first-token prior of 12 vectors" in capsys.readouterr().out
    rec = json.loads((tmp_path / "emf.json").read_text())
    assert rec["kind"] == "first_token_effect_model" and rec["first_token"]["top_k"] is not None
    # targeted ascending the whole first-token model, its prior measured on the embedded model
    vf = ["solve", "--effect-model", str(tmp_path / "emf"), "--features", "1:1.0,2:0.5"]
    assert main([*vf, "--out", str(tmp_path / "vf"), "--first-token"]) == 0
    out = capsys.readouterr().out
    assert "ascending the whole first-token model" in out and "steps taken" in out
    assert (
        main([*vf, "--out", str(tmp_path / "vf"), "--first-token", "--in-decoder-span", "0"]) == 1
    )
    assert "combines with neither --in-decoder-span nor --anchor" in capsys.readouterr().err
    solve_d = ["--features", "1:1.0,2:0.5", "--out", str(tmp_path / "vd")]
    assert main(["solve", "--effect-model", str(tmp_path / "emd"), *solve_d]) == 0
    # within the target latents' decoder rows (the embedded model's SAE, read from the record)
    span = ["solve", "--effect-model", str(tmp_path / "emd"), *solve_d, "--in-decoder-span", "2"]
    assert main(span) == 0
    assert "decoder span: latents [" in capsys.readouterr().out
    saved = json.loads((tmp_path / "vd.json").read_text())
    assert saved["target"]["raise"] == {"1": 1.0, "2": 0.5}
    assert main([*span, "--method", "sae_ts"]) == 1
    assert "--in-decoder-span is a constraint of --method targeted" in capsys.readouterr().err
    assert main([*span[:-2], "--first-token"]) == 1
    assert "--first-token needs a first-token effect model" in capsys.readouterr().err
    assert (
        main(
            [
                "solve",
                "--effect-model",
                str(tmp_path / "em"),
                "--features",
                "1:1.0,2:0.5",
                "--out",
                str(tmp_path / "v"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "measure",
                "--vector",
                str(tmp_path / "v"),
                "--scale",
                "60",
                "--effect-model",
                str(tmp_path / "em"),
                "--rollouts",
                "1",
                "--seq-len",
                "8",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert '"target_share"' in out and '"predicted_cosine"' in out
    # an anchor: a saved vector for the effect model's model and hook (here the solved one)
    anchored = ["solve", "--effect-model", str(tmp_path / "em"), "--features", "1:1.0,2:0.5"]
    assert main([*anchored, "--out", str(tmp_path / "va"), "--anchor", str(tmp_path / "v")]) == 0
    assert float(capsys.readouterr().out.split("cosine to the anchor ")[1].split()[0]) > 0.9
    from sae_ts.steering import SteeringVector

    sv = SteeringVector.load(tmp_path / "v")
    SteeringVector(sv.vector, hook_name=sv.hook_name, model_name="other", method="caa").save(
        tmp_path / "other"
    )
    assert (
        main([*anchored, "--out", str(tmp_path / "vo"), "--anchor", str(tmp_path / "other")]) == 1
    )
    assert "is a vector for 'other'" in capsys.readouterr().err
    # out-of-range features are a clear one-line error, not a traceback
    assert (
        main(
            [
                "solve",
                "--effect-model",
                str(tmp_path / "em"),
                "--features",
                "999999",
                "--out",
                str(tmp_path / "w"),
            ]
        )
        == 1
    )
    assert "out of range" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_on_a_new_task_directory_end_to_end(tmp_path, capsys, monkeypatch, space_task):
    """`sae-ts compare --task DIR` on a task in the SAE-TS format, as a user runs it (smoke budget;
    the other settings are the defaults: shipped effect model, offline judges, validation)."""
    import json

    task = space_task
    out = tmp_path / "cmp"
    rc = main(["compare", "--task", str(task), "--budget", "smoke",
               "--json", str(out / "r.json"), "--out-dir", str(out)])  # fmt: skip
    assert rc == 0
    doc = json.loads((out / "r.json").read_text())
    r = doc["tasks"]["saets_space"]
    # the default selection: FGAA's weighted contrastive target (raised and pushed-down latents)
    assert r["features_source"] == "fgaa" and r["selection"]["method"] == "fgaa"
    assert any(f["weight"] > 0 for f in r["features"]) and len(r["features"]) <= 15
    assert all(f["density"] <= 0.01 for f in r["features"])
    assert r["fgaa"]["same_vector_as"] == "sae_ts"
    assert r["fgaa"]["score"] == r["sae_ts"]["score"]
    build = set(r["roles"]["build"]["pos"] + r["roles"]["build"]["neg"])
    assert not build & set(r["roles"]["judge"]["pos"] + r["roles"]["judge"]["neg"])
    for m in ("unsteered", "caa", "sae", "sae_ts", "targeted", "targeted_span", "targeted_caa"):
        e = r[m]
        assert 0 <= e["score"] <= 1 and e["ci"][0] <= e["score"] <= e["ci"][1]
        assert m == "unsteered" or "vs_unsteered" in e
    for m in ("caa", "sae", "sae_ts", "targeted", "targeted_span", "targeted_caa"):
        assert 0 <= r[m]["effect"]["target_share"] <= 1 and r[m]["effect"]["norm_fraction"] > 0
    assert {"lm_criterion", "criterion_embedding"} <= set(r["validation"])
    assert doc["validation"]["lm_criterion"]["pooled"]["n"] == 4
    assert doc["config"]["norm_unit"] == pytest.approx(143.75, abs=0.01)
    assert doc["config"]["effect_model"].endswith("smollm2-135m-res12-effects")
    assert set(doc["mean"]) == {
        "unsteered",
        "caa",
        "sae",
        "sae_ts",
        "targeted",
        "targeted_span",
        "targeted_caa",
        "fgaa",
        "prompt",
    }
    assert r["prompt"]["norm_fraction"] is None and "vs_caa" in r["prompt"]
    assert (out / "saets_space_sweep.png").exists() and (out / "differences.png").exists()
    table = (out / "table.md").read_text()
    assert "unsteered" in table and "sae_ts − caa" in table
    printed = capsys.readouterr().out
    assert "saets_space" in printed and "targeted − unsteered" in printed

    # a rerun with the same protocol resumes the finished task from its checkpoint, unchanged
    import sae_ts.experiments.compare.run as comparison

    def must_not_run(*args, **kwargs):
        raise AssertionError("a checkpointed task was run again")

    monkeypatch.setattr(comparison, "_run_task", must_not_run)
    rc = main(["compare", "--task", str(task), "--budget", "smoke",
               "--json", str(out / "r2.json"), "--out-dir", str(out)])  # fmt: skip
    assert rc == 0
    assert "resumed" in capsys.readouterr().out
    again = json.loads((out / "r2.json").read_text())
    assert again["tasks"] == doc["tasks"] and again["mean"] == doc["mean"]


@pytest.mark.slow
def test_compare_with_another_target_selection_on_a_new_task(tmp_path, capsys, space_task):
    """`sae-ts compare --task DIR --targets NAME`: the record says which rule picked which
    latents, and why."""
    import json

    out = tmp_path / "cmp"
    rc = main(["compare", "--task", str(space_task), "--budget", "smoke", "--targets", "output",
               "--methods", "caa,sae,targeted,prompt", "--no-validation",
               "--json", str(out / "r.json"), "--out-dir", str(out)])  # fmt: skip
    assert rc == 0
    r = json.loads((out / "r.json").read_text())["tasks"]["saets_space"]
    assert r["features_source"] == "output" and r["selection"]["method"] == "output"
    scores = {c["latent"]: c["score"] for c in r["selection"]["candidates"]}
    chosen = [f["latent"] for f in r["features"]]
    assert len(chosen) == 3 and min(scores[j] for j in chosen) >= sorted(scores.values())[-3]
    assert set(r) >= {"caa", "sae", "targeted", "prompt"} and "sae_ts" not in r
    with pytest.raises(SystemExit):
        main(["compare", "--task", str(space_task), "--targets", "magic"])


def test_reliability_command_end_to_end_on_a_tiny_model(
    tmp_path, capsys, monkeypatch, kindness_persona
):
    import json

    import sae_ts.cli.reliability as cli_rel
    from sae_ts.testing import tiny_model

    hook = "blocks.1.hook_resid_post"
    monkeypatch.setattr(cli_rel, "load_from_args", lambda args: (tiny_model(seed=0), None, hook))
    ds = kindness_persona
    out = tmp_path / "rel.json"
    argv = ["reliability", "--dataset", str(ds), "--vector", "random", "--no-ood",
            "--json", str(out), "--seed", "0"]  # fmt: skip
    assert main(argv) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("kindness"))
    rec = json.loads(out.read_text())["kindness_persona"]
    st = rec["steerability"]
    assert f"steerability {st['mean']:+.3f}" in line
    la = st["letter_adjusted"]
    assert la["identified"]  # the persona layouts are balanced A/B, so c is identified
    assert f"letter-adjusted {la['mean']:+.3f} [{la['ci95'][0]:+.3f}" in line
    assert f"line fit R² {st['linearity']['median_r2']:.2f}" in line
    assert rec["vector"].startswith("random")

"""Artefacts: safetensors + JSON provenance, atomic writes, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from sae_ts.artifacts import load_artifact, read_checkpoint, save_artifact, write_checkpoint
from sae_ts.errors import ArtifactError
from sae_ts.steering import SteeringVector

HOOK = "blocks.0.hook_resid_post"


def test_round_trip_and_kind_check(tmp_path):
    stem = save_artifact(tmp_path / "a", {"x": torch.arange(3.0)}, {"kind": "thing", "n": 3})
    t, rec = load_artifact(stem, kind="thing")
    assert torch.equal(t["x"], torch.arange(3.0)) and rec["n"] == 3
    with pytest.raises(ArtifactError):
        load_artifact(stem, kind="other")


def test_corrupt_artifacts_are_clear_errors(tmp_path):
    sv = SteeringVector(torch.ones(8), HOOK, "m", "caa")
    stem = sv.save(tmp_path / "v")
    (tmp_path / "v.safetensors").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        SteeringVector.load(stem)
    rec = json.loads((tmp_path / "v.json").read_text())
    rec.pop("sha256")  # an artefact from before the checksum: the file itself is checked
    (tmp_path / "v.json").write_text(json.dumps(rec))
    with pytest.raises(ArtifactError, match="corrupt safetensors"):
        SteeringVector.load(stem)
    sv.save(tmp_path / "w")
    (tmp_path / "w.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt provenance"):
        SteeringVector.load(tmp_path / "w")
    with pytest.raises(ArtifactError, match="no artefact"):
        SteeringVector.load(tmp_path / "missing")


def test_checkpoints_are_keyed_atomic_and_corrupt_ones_refused(tmp_path):
    path = tmp_path / "tasks" / "t.json"
    assert read_checkpoint(path, "k1") is None  # none yet
    write_checkpoint(path, "k1", {"score": 0.5})
    assert read_checkpoint(path, "k1") == {"score": 0.5}
    assert read_checkpoint(path, "k2") is None  # other settings: not reused
    assert [p.name for p in path.parent.iterdir()] == ["t.json"]  # no temporary file left
    path.write_text('{"key": "k1", "record": [1, 2]}')  # the per-job field of older checkpoints
    assert read_checkpoint(path, "k1") == [1, 2]
    path.write_text('{"key": "k1", "reco')
    with pytest.raises(ArtifactError, match=r"corrupt task checkpoint .*t\.json"):
        read_checkpoint(path, "k1", "task checkpoint")
    path.write_text('{"key": "k1"}')
    with pytest.raises(ArtifactError, match="corrupt checkpoint"):
        read_checkpoint(path, "k1")

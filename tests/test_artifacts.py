"""Artefacts: safetensors + JSON provenance, atomic writes, clear errors."""

from __future__ import annotations

import pytest
import torch

from sae_ts.artifacts import load_artifact, save_artifact
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
    with pytest.raises(ArtifactError, match="corrupt safetensors"):
        SteeringVector.load(stem)
    sv.save(tmp_path / "w")
    (tmp_path / "w.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt provenance"):
        SteeringVector.load(tmp_path / "w")
    with pytest.raises(ArtifactError, match="no artefact"):
        SteeringVector.load(tmp_path / "missing")

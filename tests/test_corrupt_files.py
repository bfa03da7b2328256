"""The corrupt-file sweep: for each artefact kind, write a good file, then truncate it at a random
offset, flip a byte and drop a key. Loading gives a clear error (a ``SaeTsError``, or the
``ValueError`` / ``FileNotFoundError`` it derives from), never a traceback of another type and
never a wrong result: a damaged safetensors file is caught by the checksum in its record.

Offsets and bytes come from hypothesis (the derandomised profile in ``conftest.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sae_ts.artifacts import read_checkpoint, write_checkpoint
from sae_ts.effect_model import LinearEffectModel
from sae_ts.effects import EffectDataset
from sae_ts.errors import SaeTsError
from sae_ts.experiments.compare.tasks import load_task
from sae_ts.experiments.reliability.items import load_mwe
from sae_ts.features import INDEX_FORMAT, load_feature_index
from sae_ts.sae import load_sae
from sae_ts.steering import SteeringVector
from sae_ts.testing import tiny_sae

CLEAR = (SaeTsError, ValueError, FileNotFoundError)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


# Each kind: write(dir) -> (the file to damage, the JSON file whose key to drop), and
# load(dir) -> the data a caller uses (compared to the good file's).
def _effect_model(d: Path) -> tuple[Path, Path]:
    g = torch.Generator().manual_seed(0)
    LinearEffectModel(torch.randn(8, 12, generator=g), torch.randn(12, generator=g),
                      {"scale": 2.0}).save(d / "em")  # fmt: skip
    return d / "em.safetensors", d / "em.json"


def _load_effect_model(d: Path) -> Any:
    em = LinearEffectModel.load(d / "em")
    return {"W": em.W, "b": em.b, "scale": em.record["scale"]}


def _effect_dataset(d: Path) -> tuple[Path, Path]:
    g = torch.Generator().manual_seed(1)
    EffectDataset(torch.randn(5, 8, generator=g), torch.ones(5), torch.randn(5, 12, generator=g),
                  torch.rand(12, generator=g)).save(d / "ds")  # fmt: skip
    return d / "ds.safetensors", d / "ds.json"


def _load_effect_dataset(d: Path) -> Any:
    ds = EffectDataset.load(d / "ds")
    return [ds.inputs, ds.scales, ds.effects, ds.baseline]


def _vector(d: Path) -> tuple[Path, Path]:
    v = torch.randn(8, generator=torch.Generator().manual_seed(2))
    SteeringVector(v, "blocks.1.hook_resid_post", "tiny", "targeted", 3.0).save(d / "v")
    return d / "v.safetensors", d / "v.json"


def _load_vector(d: Path) -> Any:
    sv = SteeringVector.load(d / "v")
    return [sv.vector, sv.hook_name, sv.model_name, sv.method, sv.scale]


def _sae_dir(d: Path) -> tuple[Path, Path]:
    """An SAE directory as sae-ts exports one (the weights' sha256 in the metadata)."""
    from sae_ts._util import sha256_file

    tiny_sae(8, "blocks.1.hook_resid_post", d_sae=12, architecture="jumprelu").save_model(d / "sae")
    cfg = json.loads((d / "sae" / "cfg.json").read_text())
    cfg["metadata"]["weights_sha256"] = sha256_file(d / "sae" / "sae_weights.safetensors")
    (d / "sae" / "cfg.json").write_text(json.dumps(cfg))
    return d / "sae" / "sae_weights.safetensors", d / "sae" / "cfg.json"


def _load_sae_dir(d: Path) -> Any:
    sae = load_sae(d / "sae")
    return {k: v.detach() for k, v in sae.state_dict().items()} | {
        "hook": sae.cfg.metadata.hook_name
    }


def _task(d: Path) -> tuple[Path, Path]:
    (d / "task").mkdir()
    (d / "task" / "act_steer.json").write_text(
        json.dumps({"pos": ["a red apple", "red wine"], "neg": ["a blue sky", "blue jeans"]})
    )
    crit = [{"name": "red", "score": "The text is about red things.", "coherence": "Coherent."}]
    (d / "task" / "criteria.json").write_text(json.dumps(crit))
    return d / "task" / "act_steer.json", d / "task" / "criteria.json"


def _load_task(d: Path) -> Any:
    t = load_task(d / "task")
    return [t.name, t.pos, t.neg, t.score_criterion, t.coherence_criterion]


def _mwe(d: Path) -> tuple[Path, Path]:
    rows = [{"question": f"Is {k} good?\n\nChoices:\n (A) Yes\n (B) No",
             "answer_matching_behavior": " (A)", "answer_not_matching_behavior": " (B)"}
            for k in range(3)]  # fmt: skip
    (d / "mwe.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return d / "mwe.jsonl", d / "mwe.jsonl"


def _checkpoint(d: Path) -> tuple[Path, Path]:
    write_checkpoint(d / "ck.json", "k1", {"score": 0.5, "rows": [1, 2, 3]})
    return d / "ck.json", d / "ck.json"


def _load_checkpoint(d: Path) -> Any:
    return read_checkpoint(d / "ck.json", "k1")


def _feature_index(d: Path) -> tuple[Path, Path]:
    index = {"format": INDEX_FORMAT, "latents": {"3": {"contexts": []}}, "n_latents": 12}
    (d / "features.json").write_text(json.dumps(index))
    return d / "features.json", d / "features.json"


KINDS: dict[str, tuple[Callable[[Path], tuple[Path, Path]], Callable[[Path], Any], bool]] = {
    # name: (write, load, whether a flipped byte must be caught: the safetensors kinds)
    "effect model": (_effect_model, _load_effect_model, True),
    "effect dataset": (_effect_dataset, _load_effect_dataset, True),
    "steering vector": (_vector, _load_vector, True),
    "SAE directory": (_sae_dir, _load_sae_dir, True),
    "task directory": (_task, _load_task, False),
    "MWE dataset": (_mwe, lambda d: load_mwe(d / "mwe.jsonl"), False),
    "checkpoint": (_checkpoint, _load_checkpoint, False),
    "feature index": (_feature_index, lambda d: load_feature_index(d / "features.json"), False),
}
_FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


def _fresh(tmp_path_factory: pytest.TempPathFactory, kind: str) -> tuple[Path, Path, Path, Any]:
    d = tmp_path_factory.mktemp("artefact")
    write, load, _ = KINDS[kind]
    data, record = write(d)
    return d, data, record, load(d)


def _outcome(load: Callable[[Path], Any], d: Path) -> tuple[str, Any]:
    try:
        return "loaded", load(d)
    except CLEAR as e:
        assert str(e), "an error without a message"
        return "refused", e


@pytest.mark.parametrize("kind", sorted(KINDS))
@_FUZZ
@given(cut=st.floats(0.0, 0.999))
def test_a_truncated_file_is_refused(kind, cut, tmp_path_factory):
    d, data, _, good = _fresh(tmp_path_factory, kind)
    raw = data.read_bytes()
    data.write_bytes(raw[: int(cut * len(raw))])
    status, got = _outcome(KINDS[kind][1], d)
    # a cut that leaves a whole JSONL line set or a JSON-equivalent prefix may still load,
    # and then it must be what was written
    assert status == "refused" or _same(got, good), (kind, cut)


@pytest.mark.parametrize("kind", sorted(KINDS))
@_FUZZ
@given(where=st.floats(0.0, 0.999), flip=st.integers(1, 255))
def test_a_flipped_byte_never_loads_as_a_wrong_result(kind, where, flip, tmp_path_factory):
    d, data, _, good = _fresh(tmp_path_factory, kind)
    raw = bytearray(data.read_bytes())
    raw[int(where * len(raw))] ^= flip
    data.write_bytes(bytes(raw))
    status, got = _outcome(KINDS[kind][1], d)
    if KINDS[kind][2]:  # tensors: the checksum catches every flip
        assert status == "refused" or _same(got, good), (kind, where, flip)
    # text files: a flip may make other valid text (that is an edit, not damage); it must not
    # crash with anything but a clear error, which _outcome checked


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_dropped_key_is_refused(kind, tmp_path_factory):
    d, data, record, _ = _fresh(tmp_path_factory, kind)
    if record.suffix == ".jsonl":
        rows = [json.loads(x) for x in record.read_text().splitlines() if x.strip()]
        rows[1].pop("answer_matching_behavior")
        record.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        doc = json.loads(record.read_text())
        obj = doc[0] if isinstance(doc, list) else doc
        for key in ("kind", "metadata", "pos", "score", "key", "format"):
            if key in obj:
                obj.pop(key)
                break
        else:
            pytest.fail(f"{kind}: no key to drop in {sorted(obj)}")
        record.write_text(json.dumps(doc))
    status, _ = _outcome(KINDS[kind][1], d)
    assert status == "refused", kind
    if data.suffix == ".safetensors":  # and a tensor dropped from the file
        from safetensors.torch import load_file, save_file

        _, data, _, _ = _fresh(tmp_path_factory, kind)
        tensors = load_file(str(data))
        tensors.pop(sorted(tensors)[0])
        save_file(tensors, str(data))
        status, _ = _outcome(KINDS[kind][1], data.parent)
        assert status == "refused", kind

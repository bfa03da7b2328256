"""The comparison benchmark's committed results.json holds no task text (only references)."""

from __future__ import annotations

import importlib.util
import json

from tests.conftest import REPO

TASK = REPO / "tests" / "fixtures" / "saets_space"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location(
        "compare_methods", REPO / "benchmarks" / "compare_methods.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_redaction_replaces_every_task_text_and_keeps_the_rest(tmp_path):
    texts = json.loads((TASK / "act_steer.json").read_text())
    criterion = json.loads((TASK / "criteria.json").read_text())[0]["score"]
    record = {
        "roles": {"build": {"pos": texts["pos"][:2]}, "judge": {"neg": texts["neg"][:2]}},
        "features": [{"latent": 3, "contexts": [{"text": texts["pos"][3], "activation": 1.5}]}],
        "criterion": criterion,
        "short": "space",  # the fixture's name, a whole short string: replaced
        "examples": [f"Prefix: {texts['pos'][4]} and more", "I think the sky is blue today"],
        "score": 0.25,
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps(record))
    n = _load_benchmark().redact_task_texts(path, [TASK])
    out = path.read_text()
    for t in [*texts["pos"], *texts["neg"], criterion]:
        assert t not in out
    doc = json.loads(out)
    assert n == 8
    assert doc["roles"]["build"]["pos"][0].startswith("[saets_space/act_steer.json text sha256:")
    assert doc["examples"][1] == "I think the sky is blue today"  # not a task text: kept
    assert doc["score"] == 0.25 and doc["features"][0]["contexts"][0]["activation"] == 1.5
    assert doc["features"][0]["latent"] == 3

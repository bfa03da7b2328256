"""The comparison benchmark's committed results.json holds no task text (only references)."""

from __future__ import annotations

import json
import shutil

from tests.conftest import load_benchmark


def test_redaction_replaces_every_task_text_and_keeps_the_rest(tmp_path, space_task):
    task = tmp_path / "space"
    shutil.copytree(space_task, task)
    texts = json.loads((task / "act_steer.json").read_text())
    texts["pos"].append("Stars shine")  # a short text
    texts["hook"] = "blocks.12.hook_resid_post"  # an identifier, not prose
    (task / "act_steer.json").write_text(json.dumps(texts))
    criterion = json.loads((task / "criteria.json").read_text())[0]["score"]
    record = {
        "roles": {"build": {"pos": texts["pos"][:2]}, "judge": {"neg": texts["neg"][:2]}},
        "features": [{"latent": 3, "contexts": [{"text": texts["pos"][3], "activation": 1.5}]}],
        "criterion": criterion,
        "short": "Stars shine",  # a short text as the whole string: replaced
        "name": "space",  # the task's name: kept
        "hook": "blocks.12.hook_resid_post",  # kept
        "examples": [f"Prefix: {texts['pos'][4]} and more", "Stars shine on the sea tonight"],
        "score": 0.25,
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps(record))
    n = load_benchmark("compare_methods").redact_task_texts(path, [task])
    out = path.read_text()
    for t in [*texts["pos"][:5], *texts["neg"][:2], criterion]:
        assert t not in out
    doc = json.loads(out)
    assert n == 8
    assert doc["roles"]["build"]["pos"][0].startswith("[space/act_steer.json text sha256:")
    assert doc["examples"][1] == "Stars shine on the sea tonight"  # a short text inside: kept
    assert doc["score"] == 0.25 and doc["features"][0]["contexts"][0]["activation"] == 1.5
    assert doc["features"][0]["latent"] == 3 and doc["name"] == "space"
    assert doc["hook"] == "blocks.12.hook_resid_post"

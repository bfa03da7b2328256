"""The test helpers work offline: a local tokenizer, no pip, no hub."""

from __future__ import annotations

import subprocess
import sys


def test_tiny_model_needs_no_network():
    code = (
        "import subprocess\n"
        "run = subprocess.run\n"
        "def no_pip(cmd, *a, **k):\n"
        "    assert 'pip' not in ' '.join(map(str, cmd)), cmd\n"
        "    return run(cmd, *a, **k)\n"
        "subprocess.run = no_pip\n"
        "from sae_ts.testing import tiny_model, tiny_sae\n"
        "m = tiny_model()\n"
        "assert m.to_tokens(['I think'])[0, 0].item() == 0\n"
        "assert m.tokenizer.apply_chat_template([{'role': 'user', 'content': 'hi'}], tokenize=False)\n"
        "s = tiny_sae(m.cfg.d_model, 'blocks.0.hook_resid_post')\n"
        "assert s.cfg.metadata.hook_name == 'blocks.0.hook_resid_post'\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "SAE_TS_CACHE": "/nonexistent", "OMP_NUM_THREADS": "1"}
    import os

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}
    )
    assert out.returncode == 0, out.stderr[-2000:]


def test_tiny_sae_architectures():
    from sae_ts.testing import tiny_sae

    topk = tiny_sae(16, "blocks.0.hook_resid_post", d_sae=32, architecture="topk", k=4)
    assert type(topk).__name__ == "TopKSAE" and topk.cfg.k == 4
    std = tiny_sae(16, d_sae=8, sink_reference_norm=3.0)
    assert std.cfg.metadata.sink_reference_norm == 3.0

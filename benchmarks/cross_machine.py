"""How far apart are two machines' numbers? A stand-in: the same work with 1 and 2 threads.

No second CPU type or GPU is at hand here, so the stand-in for "another machine" is another
thread count: it changes how the BLAS splits and sums products, which is the mechanism by which
CPU types differ. Each part runs twice, in fresh processes, with ``torch.set_num_threads(1)`` and
``(2)``, on the embedded model, seed 0:

* an effect chunk: 8 directions (4 decoder rows, 4 Gaussian), 1 rollout per prompt, the
  campaign's protocol (scale 0.8 x the per-token norm);
* a comparison task's scores (``wedding``, the smoke budget, offline judges, no validation);
* a steerability mean (``persona/narcissism``, 16 items, CAA, no OOD variants).

It prints the largest relative difference of each, and whether the two runs are bit-identical.

    python benchmarks/cross_machine.py --json benchmarks/results/cross_machine.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"

_PART = r"""
import json, sys, torch
threads, part, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
torch.set_num_threads(threads)
import sae_ts
from sae_ts.effects import (EffectConfig, EffectEstimator, decoder_directions, estimate_effects,
                            random_directions, typical_residual_norm)
if part == "effects":
    model, sae, hook = sae_ts.load_default()
    v = torch.cat([decoder_directions(sae, n=4, seed=0), random_directions(4, 576, seed=0)])
    scale = round(0.8 * typical_residual_norm(model, hook), 2)
    est = EffectEstimator(model, sae, config=EffectConfig(rollouts=1), seed=0)
    ds = estimate_effects(est, v, scale, progress=False)
    json.dump({"values": ds.effects.flatten().tolist()}, open(out, "w"))
elif part == "compare":
    from sae_ts.experiments.compare.run import run_comparison
    import tempfile
    d = tempfile.mkdtemp()
    doc = run_comparison([sys.argv[4]], budget="smoke", out_dir=d, validate=False)
    rec = doc["tasks"][list(doc["tasks"])[0]]
    rows = [k for k in ("unsteered", "caa", "sae", "sae_ts", "targeted", "targeted_span", "fgaa",
                               "prompt") if k in rec]
    json.dump({"values": [rec[k]["score"] for k in rows], "rows": rows}, open(out, "w"))
else:
    from sae_ts.experiments.reliability.report import run_reliability
    model, sae, hook = sae_ts.load_default()
    doc = run_reliability(model, [sys.argv[4]], hook, "caa", max_items=16, seed=0, variants=False)
    st = doc["narcissism"]["steerability"]
    json.dump({"values": [st["mean"], *st["slopes"]] if "slopes" in st else [st["mean"]]},
              open(out, "w"))
"""


def _run(threads: int, part: str, extra: list[str]) -> list[float]:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "out.json"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run([sys.executable, "-c", _PART, str(threads), part, str(out), *extra],
                       check=True, env=env)  # fmt: skip
        return [float(x) for x in json.loads(out.read_text())["values"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    print("command: python benchmarks/cross_machine.py", " ".join(sys.argv[1:]), "(seed 0)")
    parts = {
        "effects": [],
        "compare": [str(SHARED / "concepts" / "saets" / "wedding")],
        "reliability": [str(SHARED / "mwe" / "persona" / "narcissism.jsonl")],
    }
    res = {}
    for part, extra in parts.items():
        a, b = _run(1, part, extra), _run(2, part, extra)
        rel = max(abs(x - y) / max(abs(x), abs(y), 1e-12) for x, y in zip(a, b))
        absd = max(abs(x - y) for x, y in zip(a, b))
        res[part] = {
            "n": len(a),
            "bit_identical": a == b,
            "max_rel_diff": rel,
            "max_abs_diff": absd,
        }
        print(f"{part:>12}: {len(a)} numbers, bit-identical {a == b}, max relative difference "
              f"{rel:.3g}, max absolute {absd:.3g}", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

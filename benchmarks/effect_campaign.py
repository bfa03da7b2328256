"""The effect-estimation campaign behind the shipped effect model (issue #12).

Two sets of candidate directions, both built deterministically from ``--seed``:

* ``train``: every decoder row of the embedded SAE except the held-out ones, plus Gaussian
  directions, ``--n-train`` in all (default 4,608 = 8 x d_model), shuffled so that any finished
  prefix of chunks is a representative sample. One rollout per prompt.
* ``test``: ``--n-test-dec`` held-out decoder rows and ``--n-test-gauss`` held-out Gaussian
  directions, measured twice (``test_a``, ``test_b``) with independent random streams and
  ``--test-rollouts`` rollouts per prompt each, so that every fit can be reported next to its noise
  ceiling (see ``sae_ts.effect_model.noise_ceiling``).

Chunks are fp16 safetensors + JSON under ``--out`` (default ``data/effects/``), resumable, and meant
to be committed as they finish so a new machine resumes the campaign where it stopped. ``--shard
k/m`` lets ``m`` processes share the work. Protocol: ``--fraction`` x the typical per-token residual
norm at the hook, top-k 50 at T = 1 (``--top-p`` to add nucleus sampling), ``--coupled`` for shared
Gumbel noise.

The campaign for another embedded model (``--model gemma-3-270m``) goes to
``data/effects_<model>/`` by default; the SAE's recorded sink ratio is used.

Examples::

    python benchmarks/effect_campaign.py --part test            # both test halves
    python benchmarks/effect_campaign.py --part train --shard 0/2 &
    python benchmarks/effect_campaign.py --part train --shard 1/2 &
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sae_ts.effects import (
    EffectConfig,
    EffectEstimator,
    estimate_effects,
    random_directions,
    typical_residual_norm,
)
from sae_ts.loading import load_default

REPO = Path(__file__).resolve().parents[1]


def candidate_sets(
    sae,
    d_model: int,
    n_train: int,
    n_test_dec: int,
    n_test_gauss: int,
    seed: int,
    n_train_dec: int | None = None,
) -> dict[str, tuple[torch.Tensor, list[str]]]:
    """{'train': (units, kinds), 'test': (units, kinds)}: decoder rows and Gaussian directions.

    ``n_train_dec``: decoder rows in the training set (default: every row not held out); the
    rest of ``n_train`` is Gaussian. The default reproduces the SmolLM2 campaign exactly.
    """
    W = sae.W_dec.detach().float().cpu()
    live = torch.arange(W.shape[0])  # every decoder row (the shipped SAE has 1 dead latent)
    g = torch.Generator().manual_seed(seed)
    perm = live[torch.randperm(len(live), generator=g)]
    test_rows, train_rows = perm[:n_test_dec], perm[n_test_dec:]
    if n_train_dec is not None:
        if not 0 <= n_train_dec <= min(len(train_rows), n_train):
            raise ValueError(
                f"n_train_dec={n_train_dec} must be in [0, {min(len(train_rows), n_train)}]"
            )
        train_rows = train_rows[:n_train_dec]
    n_gauss_train = n_train - len(train_rows)
    if n_gauss_train < 0:
        raise ValueError(
            f"n_train={n_train} is below the {len(train_rows)} decoder rows (set --n-train-dec)"
        )
    gauss = random_directions(n_gauss_train + n_test_gauss, d_model, seed=seed + 1)
    unit = W / W.norm(dim=-1, keepdim=True)
    train = torch.cat([unit[train_rows], gauss[:n_gauss_train]])
    kinds = [f"dec:{int(i)}" for i in train_rows] + ["gauss"] * n_gauss_train
    order = torch.randperm(len(train), generator=g)
    test = torch.cat([unit[test_rows], gauss[n_gauss_train:]])
    test_kinds = [f"dec:{int(i)}" for i in test_rows] + ["gauss"] * n_test_gauss
    return {
        "train": (train[order], [kinds[i] for i in order.tolist()]),
        "test": (test, test_kinds),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["train", "test", "baseline"], required=True)
    ap.add_argument("--model", default="smollm2-135m", help="an embedded model (its shipped SAE)")
    ap.add_argument("--out", type=Path, default=None, help="default: data/effects[_<model>]")
    ap.add_argument("--fraction", type=float, default=0.8, help="scale, x the per-token norm")
    ap.add_argument("--top-p", type=float, default=None)
    ap.add_argument("--coupled", action="store_true")
    ap.add_argument("--n-train", type=int, default=4608)
    ap.add_argument(
        "--n-train-dec", type=int, default=None,
        help="decoder rows among the training vectors (default: every row not held out)",
    )  # fmt: skip
    ap.add_argument("--n-test-dec", type=int, default=64)
    ap.add_argument("--n-test-gauss", type=int, default=64)
    ap.add_argument("--test-rollouts", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--shard", default="0/1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="e.g. cuda; results are recorded per device")
    ap.add_argument("--batch-rows", type=int, default=256, help="sequences per forward pass")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"command: python benchmarks/effect_campaign.py {vars(args)}", flush=True)
    if args.out is None:
        tail = "" if args.model == "smollm2-135m" else f"_{args.model}"
        args.out = REPO / "data" / f"effects{tail}"
    model, sae, hook = load_default(device=args.device, model=args.model)
    norm = typical_residual_norm(model, hook)
    sets = candidate_sets(
        sae, model.cfg.d_model, args.n_train, args.n_test_dec, args.n_test_gauss, args.seed,
        args.n_train_dec,
    )  # fmt: skip
    scale = round(args.fraction * norm, 2)
    print(f"per-token norm {norm:.2f}, scale {scale}", flush=True)
    k, m = (int(x) for x in args.shard.split("/"))
    common = {
        "top_k": 50,
        "top_p": args.top_p,
        "coupled": args.coupled,
        "batch_rows": args.batch_rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part in ("train", "baseline"):
        units, kinds = sets["train"]
        est = EffectEstimator(model, sae, config=EffectConfig(rollouts=1, **common), seed=args.seed)
        n_chunks = -(-len(units) // args.chunk_size)
        # --part baseline: a shard that owns no chunk writes the manifest and baseline only, once,
        # before several shards start
        estimate_effects(
            est, units, scale, out_dir=args.out / "train", chunk_size=args.chunk_size,
            store_dtype=torch.float16,
            shard=(n_chunks, n_chunks + 1) if args.part == "baseline" else (k, m),
        )  # fmt: skip
        (args.out / "train_kinds.json").write_text(json.dumps(kinds))
    else:
        units, kinds = sets["test"]
        cfg = EffectConfig(rollouts=args.test_rollouts, **common)
        for half, seed in (("test_a", args.seed + 101), ("test_b", args.seed + 202)):
            est = EffectEstimator(model, sae, config=cfg, seed=seed)
            estimate_effects(est, units, scale, out_dir=args.out / half,
                             chunk_size=args.chunk_size, store_dtype=torch.float16, shard=(k, m))  # fmt: skip
        (args.out / "test_kinds.json").write_text(json.dumps(kinds))
    print("done", flush=True)


if __name__ == "__main__":
    main()

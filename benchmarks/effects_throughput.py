"""Effect-estimation throughput: a faithful one-vector-at-a-time loop vs the sae-ts estimator.

Both run in this one process, on the embedded default model and SAE, at the same rollouts, prompts
and tokens per vector. The official-style loop follows the SAE-TS code: for each vector and prompt,
``HookedTransformer.generate`` under a steering hook, then a re-run of the generated tokens up to
the SAE layer, SAE-encode, average. It runs on the model as TransformerLens lays it out (stock) and
on sae-ts's re-laid-out weights, so the two sources of speed-up are reported separately.

    python benchmarks/effects_throughput.py --vectors-official 2 --vectors 32 --rollouts 8

``--ray --workers 1,2`` also measures the same vectors on a Ray cluster (a local one unless
``--ray-address`` is given), in chunks of ``--chunk-size`` vectors, with 1 and then 2 workers of
one CPU (one torch thread) each; actor start-up and model loading are left out of the timing.
``--vectors-official 0`` skips the official-style loops.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time

import torch

import sae_ts
from sae_ts.effects import (
    EffectConfig,
    EffectEstimator,
    _Chunk,
    _EstimatorSpec,
    _measure_chunk,
    random_directions,
)
from sae_ts.executors import RayExecutor
from sae_ts.models import fast_weight_layout, hook_layer, to_tokens
from sae_ts.sae import sink_mask
from sae_ts.steering import steer


def official_loop(model, sae, hook, vectors, scale, cfg: EffectConfig) -> torch.Tensor:
    """One vector at a time, as in the SAE-TS code: generate, then re-run to the SAE layer."""
    out = []
    layer = hook_layer(hook)
    for v in vectors:
        sums, count = torch.zeros(sae.cfg.d_sae), 0
        for p in cfg.prompts:
            toks = to_tokens(model, [p]).expand(cfg.rollouts, -1)
            with steer(model, v, hook, scale=scale):
                gen = model.generate(
                    toks, max_new_tokens=cfg.seq_len - toks.shape[1], top_k=cfg.top_k,
                    top_p=cfg.top_p, temperature=cfg.temperature, verbose=False,
                    stop_at_eos=False, use_past_kv_cache=True,
                )  # fmt: skip
            with torch.no_grad():
                _, cache = model.run_with_cache(gen, names_filter=hook, stop_at_layer=layer + 1)
            acts = cache[hook]
            keep = ~sink_mask(acts)
            feats = sae.encode(acts[keep])
            sums += feats.sum(0)
            count += int(keep.sum())
        out.append(sums / count)
    return torch.stack(out)


def stock_layout(model) -> None:
    for p in model.parameters():
        p.data = p.data.contiguous()


def ray_throughput(est, vectors, scale, workers, chunk_size, address, tokens_per_vector) -> dict:
    """vectors/s and tok/s of ``workers`` Ray actors measuring ``vectors`` in chunks."""
    spec = _EstimatorSpec.of(est)
    jobs = [
        _Chunk(
            vectors[i : i + chunk_size], torch.full((len(vectors[i : i + chunk_size]),), scale), i
        )
        for i in range(0, len(vectors), chunk_size)
    ]
    with RayExecutor(functools.partial(sae_ts.load_default), workers, address=address) as ex:
        warm = [_Chunk(vectors[:1], torch.full((1,), scale), 0)] * workers  # one per actor
        list(ex.imap(_measure_chunk, warm, remote=spec))
        t = time.perf_counter()
        list(ex.imap(_measure_chunk, jobs, remote=spec))
        dt = time.perf_counter() - t
    return {
        "workers": workers,
        "chunks": len(jobs),
        "vectors_s": len(vectors) / dt,
        "tok_s": len(vectors) * tokens_per_vector / dt,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--vectors-official", type=int, default=2)
    ap.add_argument("--vectors", type=int, default=32)
    ap.add_argument("--rollouts", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=14, help="first N of the paper's 14 prompts")
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--batch-rows", type=int, default=256)
    ap.add_argument("--scale", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ray", action="store_true", help="also measure on Ray workers")
    ap.add_argument("--workers", default="1,2", help="worker counts to measure with --ray")
    ap.add_argument("--chunk-size", type=int, default=8, help="vectors per Ray job")
    ap.add_argument("--ray-address", default=None, help="a running cluster (default: local)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    model, sae, hook = sae_ts.load_default()
    base = EffectConfig()
    cfg = EffectConfig(
        prompts=base.prompts[: args.prompts],
        seq_len=args.seq_len,
        rollouts=args.rollouts,
        batch_rows=args.batch_rows,
    )
    vecs = random_directions(
        max(args.vectors, args.vectors_official), model.cfg.d_model, seed=args.seed
    )
    tokens_per_vector = args.rollouts * args.prompts * args.seq_len
    res: dict = {
        "command": " ".join(["python", *sys.argv]),
        "seed": args.seed,
        "tokens_per_vector": tokens_per_vector,
        "config": cfg.to_dict(),
        "torch_threads": torch.get_num_threads(),
    }

    # plain batched forward (full model, logits), the reference throughput
    x = torch.randint(100, 40000, (args.batch_rows // 4, args.seq_len))
    with torch.no_grad():
        model(x[:2])
        t = time.perf_counter()
        model(x)
        fwd = x.numel() / (time.perf_counter() - t)
    res["forward_tok_s"] = fwd

    est = EffectEstimator(model, sae, config=cfg, seed=args.seed)
    est.measure(vecs[:1], args.scale, progress=False)  # warm-up
    t = time.perf_counter()
    est.measure(vecs[: args.vectors], args.scale, progress=True)
    dt = time.perf_counter() - t
    res["saets_vectors_s"] = args.vectors / dt
    res["saets_tok_s"] = args.vectors * tokens_per_vector / dt

    res["fraction_of_forward"] = res["saets_tok_s"] / fwd
    if args.vectors_official > 0:
        t = time.perf_counter()
        official_loop(model, sae, hook, vecs[: args.vectors_official], args.scale, cfg)
        res["official_fast_layout_vectors_s"] = args.vectors_official / (time.perf_counter() - t)
        stock_layout(model)
        t = time.perf_counter()
        official_loop(model, sae, hook, vecs[: args.vectors_official], args.scale, cfg)
        res["official_stock_vectors_s"] = args.vectors_official / (time.perf_counter() - t)
        fast_weight_layout(model)
        res["ratio_vs_official_stock"] = res["saets_vectors_s"] / res["official_stock_vectors_s"]
        res["ratio_vs_official_fast_layout"] = (
            res["saets_vectors_s"] / res["official_fast_layout_vectors_s"]
        )
    if args.ray:
        res["ray"] = [
            ray_throughput(est, vecs[: args.vectors], args.scale, int(w), args.chunk_size,
                           args.ray_address, tokens_per_vector)
            for w in args.workers.split(",")
        ]  # fmt: skip
    print(json.dumps(res, indent=2))
    print(
        f"\nsae-ts estimator: {res['saets_vectors_s']:.3f} vectors/s ({res['saets_tok_s']:.0f} tok/s, "
        f"{res['fraction_of_forward']:.2f} of a plain batched forward at {fwd:.0f} tok/s, "
        f"{res['torch_threads']} torch threads)"
    )
    if args.vectors_official > 0:
        print(
            f"official loop (stock TL layout): {res['official_stock_vectors_s']:.4f} vectors/s -> ratio {res['ratio_vs_official_stock']:.1f}x\n"
            f"official loop (sae-ts layout):   {res['official_fast_layout_vectors_s']:.4f} vectors/s -> ratio {res['ratio_vs_official_fast_layout']:.1f}x"
        )
    for r in res.get("ray", []):
        print(
            f"Ray, {r['workers']} worker(s) of 1 thread, {r['chunks']} chunks: "
            f"{r['vectors_s']:.3f} vectors/s ({r['tok_s']:.0f} tok/s)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()

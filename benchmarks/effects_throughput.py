"""Effect-estimation throughput: the official SAE-TS loop at its own batch vs the sae-ts estimator.

**The official loop** is the SAE-TS code's effect measurement as it runs (``gen`` and
``get_feature_acts`` in ``src/sae_ts/ft_effects/utils.py`` of the paper's code): for each vector
and prompt, ``HookedTransformer.generate`` on a batch of 64 rollouts of that prompt under the
steering hook, with ``top_k=50, top_p=0.3``; then an unsteered re-run of the generated tokens up
to the SAE's layer and an SAE encoding of every position. TransformerLens's ``sample_logits``
applies top-p only when no top-k is given (``if top_k is not None: ... elif top_p is not None:``),
so that sampler is top-k 50 alone; the loop passes ``top_p`` anyway, as the official code does.
It runs on the model as sae-ts lays it out (``fast_weight_layout``, the same weights the
estimator uses); ``--stock-layout`` also times it on TransformerLens's own layout.

**The estimator** (:class:`~sae_ts.effects.EffectEstimator`: batched rows, KV cache, SAE read
during generation) measures the same tokens per vector: the same prompts, rollouts and sequence
length, ``batch_rows`` rows per forward pass.

**Counting.** Tokens are every position of every rollout's sequence (``seq_len`` each, BOS and
prompt included), for both. The roofline is the fp32 GEMM rate (2048³, measured in this run at
this process's thread count) over 2 × the model's matmul parameters per token (every weight
matrix including the unembedding; the embedding is a lookup). CPU seconds are the process's
(all its threads).

    OMP_NUM_THREADS=2 python benchmarks/effects_throughput.py --stock-layout   # ~4 min, quiet 2 cores

``--levers`` then times the estimator's levers, in its own protocol (the 14 prompts, 1 rollout
each, one full pass of ``batch_rows`` rows per run), against the same reference, ``--repeats``
times in turn: ``batch_rows`` (``--lever-batch-rows``), 1 torch thread, the prompt pass unembedding
its last position only (not adopted: it moves the last bits of logits at small row counts), and
``--workers-lever`` worker processes of 1 torch thread each, for the estimator and for the official
loop (one vector per worker), against this one process (~20 min with ``--repeats 2``).
``--profile PATH`` writes a torch profile of one estimator pass.

``--ray --workers 1,2`` measures the estimator on a Ray cluster (a local one unless
``--ray-address`` is given), in chunks of ``--chunk-size`` vectors (default: ``--vectors`` split
evenly over the largest worker count), with 1 and then 2 workers of one CPU (one torch thread)
each; actor start-up and model loading are left out of the timing.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import queue
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import sae_ts
from sae_ts.effects import (
    PAPER_PROMPTS,
    EffectConfig,
    EffectEstimator,
    _Chunk,
    _EstimatorSpec,
    _measure_chunk,
    random_directions,
)
from sae_ts.executors import RayExecutor
from sae_ts.models import fast_weight_layout, hook_layer, load_default_model, to_tokens
from sae_ts.steering import add_hooks, steer

# -- the two loops ---------------------------------------------------------------------------


def official_loop(
    model, sae, hook: str, vectors: torch.Tensor, scale: float, prompts, rollouts: int = 64,
    seq_len: int = 32,
) -> torch.Tensor:  # fmt: skip
    """The SAE-TS code's measurement: ``generate`` 64 rollouts per prompt, re-run, encode."""
    layer = hook_layer(hook)
    out = []
    for v in vectors:
        total, count = torch.zeros(sae.cfg.d_sae, device=sae.W_enc.device), 0
        for p in prompts:
            toks = to_tokens(model, [p])
            with steer(model, v, hook, scale=scale):
                gen = model.generate(
                    toks.expand(rollouts, -1), max_new_tokens=seq_len - toks.shape[1], top_k=50,
                    top_p=0.3, verbose=False, stop_at_eos=False,
                )  # fmt: skip
            with torch.no_grad():
                _, cache = model.run_with_cache(gen, names_filter=hook, stop_at_layer=layer + 1)
                acts = cache[hook].reshape(-1, cache[hook].shape[-1]).float()
                total += sae.encode(acts.to(sae.W_enc.dtype)).float().sum(0)
            count += acts.shape[0]
        out.append((total / count).cpu())
    return torch.stack(out)


def estimator_config(prompts, rollouts: int, seq_len: int, batch_rows: int) -> EffectConfig:
    return EffectConfig(
        prompts=tuple(prompts), rollouts=rollouts, seq_len=seq_len, batch_rows=batch_rows
    )


def estimator_run(model, sae, cfg: EffectConfig, vectors, scale, first_id: int) -> torch.Tensor:
    est = EffectEstimator(model, sae, config=cfg, seed=0)
    ids = list(range(first_id, first_id + vectors.shape[0]))
    return est.measure(vectors, scale, vector_ids=ids, progress=False)


# -- measuring -------------------------------------------------------------------------------


def matmul_params(model) -> int:
    """Weights used in matrix products per token: every 2-D+ parameter but the embedding."""
    return sum(
        p.numel() for n, p in model.named_parameters() if p.ndim >= 2 and not n.startswith("embed.")
    )


def gemm_gflops(threads: int, n: int = 2048, reps: int = 3, device: str = "cpu") -> float:
    """Best-of-``reps`` fp32 GEMM rate (n³) at ``threads`` torch threads (or on ``device``)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b
    sync()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t)
    torch.set_num_threads(old)
    return 2 * n**3 / best / 1e9


def timed(fn: Callable[[], Any], threads: int | None = None) -> tuple[float, float]:
    """(wall s, process CPU s) of ``fn()``, at ``threads`` torch threads if given."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        t, c = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - t, time.process_time() - c
    finally:
        torch.set_num_threads(old)


def _worker(inq, outq) -> None:  # a worker process of 1 torch thread: its own model and SAE
    torch.set_num_threads(1)
    model, sae, hook = sae_ts.load_default()
    outq.put("ready")
    while (job := inq.get()) is not None:
        kind, kw = job
        t = time.perf_counter()
        if kind == "official":
            official_loop(model, sae, hook, **kw)
        else:
            estimator_run(model, sae, **kw)
        outq.put(time.perf_counter() - t)


class Workers:
    """``n`` processes of 1 torch thread, each with its own model; ``run`` splits one job."""

    def __init__(self, n: int) -> None:
        ctx = mp.get_context("spawn")
        self.q = [(ctx.Queue(), ctx.Queue()) for _ in range(n)]
        self.procs = [ctx.Process(target=_worker, args=q, daemon=True) for q in self.q]
        for p in self.procs:
            p.start()
        for i in range(n):
            self._get(i)

    def _get(self, i: int) -> Any:
        while True:
            try:
                return self.q[i][1].get(timeout=5)
            except queue.Empty:
                if not self.procs[i].is_alive():
                    raise RuntimeError(f"worker {i} died (exit {self.procs[i].exitcode})") from None

    def run(self, jobs: list[tuple[str, dict]]) -> float:
        """Run one job per worker at once; the wall time until the last one finishes."""
        t = time.perf_counter()
        for (inq, _), job in zip(self.q, jobs):
            inq.put(job)
        for i in range(len(jobs)):
            self._get(i)
        return time.perf_counter() - t

    def close(self) -> None:
        for inq, _ in self.q:
            inq.put(None)
        for p in self.procs:
            p.join(timeout=60)


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


def stock_layout(model) -> None:
    """TransformerLens's own layout: every weight contiguous as stored (undoes the fast one)."""
    for p in model.parameters():
        p.data = p.data.contiguous()


# -- the levers ------------------------------------------------------------------------------


def levers(model, sae, hook, args, vecs, prompts, gemm: dict[int, float], flops: float) -> list:
    """Each lever and its reference, timed in turn ``args.repeats`` times; median tok/s.

    Every estimator case runs whole passes of its ``batch_rows`` per process, so that only the
    lever differs; fractions are of the roofline at this process's thread count (the machine's).
    """
    threads = torch.get_num_threads()
    # the estimator's levers in its own protocol (the paper's 14 prompts, 1 rollout each)
    lever_prompts = PAPER_PROMPTS
    est_tok_per_vec = len(lever_prompts) * args.seq_len
    tok_per_vec = len(prompts) * args.rollouts * args.seq_len  # the official loop's

    def n_for(rows: int) -> int:  # vectors for one pass of ``rows`` rows
        return max(1, rows // len(lever_prompts))

    def est(batch_rows: int) -> tuple[int, Callable[[], Any]]:
        cfg = estimator_config(lever_prompts, 1, args.seq_len, batch_rows)
        n = n_for(batch_rows)
        return n * est_tok_per_vec, lambda: estimator_run(model, sae, cfg, vecs[:n], args.scale, 0)

    def last_only(x: torch.Tensor, hook: Any) -> torch.Tensor | None:
        return x[:, -1:] if x.shape[1] > 1 else None  # the prompt pass: its last position only

    def prefill_last_only() -> None:  # not adopted: changes last bits at small row counts
        with add_hooks(model, [("unembed.hook_in", last_only)]):
            est(args.batch_rows)[1]()

    def off() -> None:
        official_loop(model, sae, hook, vecs[:1], args.scale, prompts, args.rollouts, args.seq_len)

    # name, tokens, run -> wall s, and for 1-thread cases the processes (the per-core roofline)
    cases: list[tuple[str, int, Callable[[], float], int]] = []

    def add(name: str, tokens: int, fn: Callable[[], Any], th: int | None = None) -> None:
        cases.append((name, tokens, lambda: timed(fn, th)[0], 1 if th == 1 else 0))

    ref_tokens, ref = est(args.batch_rows)
    add(f"estimator, batch_rows {args.batch_rows}, {threads} thread(s) (reference)", ref_tokens,
        ref)  # fmt: skip
    for b in (int(x) for x in args.lever_batch_rows.split(",") if x):
        if b != args.batch_rows:
            add(f"estimator, batch_rows {b}", *est(b))
    add("estimator, prompt pass unembeds its last position only", ref_tokens, prefill_last_only)
    if threads != 1:
        add("estimator, 1 torch thread", ref_tokens, ref, th=1)
    add(f"official loop, {threads} thread(s) (reference)", tok_per_vec, off)
    pool = None
    k = args.workers_lever
    if k > 1:
        pool = Workers(k)
        cfg = estimator_config(lever_prompts, 1, args.seq_len, args.batch_rows)
        n = n_for(args.batch_rows)
        est_jobs = [
            ("estimator", {"cfg": cfg, "vectors": vecs[i * n : (i + 1) * n], "scale": args.scale,
                           "first_id": i * n})
            for i in range(k)
        ]  # fmt: skip
        off_jobs = [
            ("official", {"vectors": vecs[i : i + 1], "scale": args.scale, "prompts": prompts,
                          "rollouts": args.rollouts, "seq_len": args.seq_len})
            for i in range(k)
        ]  # fmt: skip
        pool.run([("estimator", {**j, "vectors": j["vectors"][:1]}) for _, j in est_jobs])  # warm
        pool.run([("official", {**j, "rollouts": 2, "seq_len": 4}) for _, j in off_jobs])
        cases.append((f"estimator, {k} processes x 1 thread", k * ref_tokens,
                      functools.partial(pool.run, est_jobs), k))  # fmt: skip
        cases.append((f"official loop, {k} processes x 1 thread", k * tok_per_vec,
                      functools.partial(pool.run, off_jobs), k))  # fmt: skip
    walls: dict[str, list[float]] = {c[0]: [] for c in cases}
    try:
        for r in range(args.repeats):
            for name, _, run, _ in cases:
                walls[name].append(run())
                print(f"  lever round {r + 1}: {name}: {walls[name][-1]:.1f} s", flush=True)
    finally:
        if pool is not None:
            pool.close()
    roof = gemm[threads] * 1e9 / flops
    if threads != 1:
        gemm[1] = gemm_gflops(1)
    rows = []
    for name, tokens, _, procs in cases:
        tok_s = tokens / statistics.median(walls[name])
        row = {"lever": name, "tokens": tokens, "walls": walls[name], "tok_s": tok_s,
               "fraction_of_roofline": tok_s / roof}  # fmt: skip
        if procs:  # 1-thread processes: also against their own ceiling, procs x 1 core's roofline
            row["fraction_of_1_thread_rooflines"] = tok_s / (procs * gemm[1] * 1e9 / flops)
        rows.append(row)
    return rows


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--prompts", type=int, default=2, help="first N of the paper's 14 prompts")
    ap.add_argument("--rollouts", type=int, default=64, help="per prompt per vector (official: 64)")
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--vectors-official", type=int, default=1)
    ap.add_argument("--vectors", type=int, default=2, help="vectors for the estimator")
    ap.add_argument("--batch-rows", type=int, default=256)
    ap.add_argument("--scale", type=float, default=40.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stock-layout", action="store_true",
                    help="also time the official loop on TransformerLens's stock weight layout")  # fmt: skip
    ap.add_argument("--levers", action="store_true", help="also time each lever (see above)")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of the lever measurements")
    ap.add_argument("--lever-batch-rows", default="512")
    ap.add_argument("--workers-lever", type=int, default=2, help="processes for the process lever")
    ap.add_argument("--profile", type=Path, default=None, help="write a torch profile table here")
    ap.add_argument("--ray", action="store_true", help="also measure on Ray workers")
    ap.add_argument("--workers", default="1,2", help="worker counts to measure with --ray")
    ap.add_argument("--chunk-size", type=int, default=None,
                    help="vectors per Ray job (default: --vectors split evenly over the most workers)")  # fmt: skip
    ap.add_argument("--ray-address", default=None, help="a running cluster (default: local)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--model", default="smollm2-135m", help="an embedded model")
    ap.add_argument("--device", default="cpu", help="e.g. cuda (timings sync the device)")
    ap.add_argument("--bridge", action="store_true",
                    help="also time the estimator on a TransformerBridge of the same model")  # fmt: skip
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    threads = torch.get_num_threads()
    model, sae, hook = sae_ts.load_default(device=args.device, model=args.model)
    prompts = PAPER_PROMPTS[: args.prompts]
    tokens_per_vector = len(prompts) * args.rollouts * args.seq_len
    n_vec = max(args.vectors, args.vectors_official, 64)
    vecs = random_directions(n_vec, model.cfg.d_model, seed=args.seed)
    flops = 2.0 * matmul_params(model)
    gemm = {threads: gemm_gflops(threads, device=args.device)}
    roof = gemm[threads] * 1e9 / flops
    res: dict = {
        "command": " ".join(["python", *sys.argv]),
        "seed": args.seed,
        "torch_threads": threads,
        "prompts": list(prompts),
        "rollouts": args.rollouts,
        "seq_len": args.seq_len,
        "tokens_per_vector": tokens_per_vector,
        "gflop_per_token": flops / 1e9,
        "gemm_gflops": gemm,
        "roofline_tok_s": roof,
    }

    cfg = estimator_config(prompts, args.rollouts, args.seq_len, args.batch_rows)
    estimator_run(
        model, sae, estimator_config(prompts, 2, 8, 16), vecs[:1], args.scale, 0
    )  # warm-up
    w, c = timed(lambda: estimator_run(model, sae, cfg, vecs[: args.vectors], args.scale, 0))
    n_tok = args.vectors * tokens_per_vector
    res["estimator"] = {"vectors": args.vectors, "batch_rows": args.batch_rows, "wall_s": w,
                        "cpu_s": c, "tok_s": n_tok / w, "tok_per_cpu_s": n_tok / c,
                        "fraction_of_roofline": n_tok / w / roof}  # fmt: skip

    if args.bridge:  # the same vectors, streams and settings on the other backend
        bridge = load_default_model(device=args.device, model=args.model, backend="bridge")
        estimator_run(bridge, sae, estimator_config(prompts, 2, 8, 16), vecs[:1], args.scale, 0)
        w, c = timed(lambda: estimator_run(bridge, sae, cfg, vecs[: args.vectors], args.scale, 0))
        res["estimator_bridge"] = {"vectors": args.vectors, "batch_rows": args.batch_rows,
                                   "wall_s": w, "cpu_s": c, "tok_s": n_tok / w,
                                   "tok_per_cpu_s": n_tok / c,
                                   "fraction_of_roofline": n_tok / w / roof}  # fmt: skip
        res["ratio_bridge_vs_hooked"] = res["estimator_bridge"]["tok_s"] / res["estimator"]["tok_s"]
        del bridge

    def official(key: str) -> None:
        V = vecs[: args.vectors_official]
        w, c = timed(lambda: official_loop(model, sae, hook, V, args.scale, prompts,
                                           args.rollouts, args.seq_len))  # fmt: skip
        n_tok = args.vectors_official * tokens_per_vector
        res[key] = {"vectors": args.vectors_official, "wall_s": w, "cpu_s": c, "tok_s": n_tok / w,
                    "tok_per_cpu_s": n_tok / c, "fraction_of_roofline": n_tok / w / roof}  # fmt: skip
        res[f"ratio_vs_{key}"] = res["estimator"]["tok_s"] / res[key]["tok_s"]

    official("official")
    if args.stock_layout:
        stock_layout(model)
        official("official_stock_layout")
        fast_weight_layout(model)
    if args.profile is not None:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            estimator_run(model, sae, cfg, vecs[: args.vectors], args.scale, 0)
        args.profile.write_text(
            prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
        )
    if args.levers:
        res["levers"] = levers(model, sae, hook, args, vecs, prompts, gemm, flops)
    if args.ray:
        est = EffectEstimator(model, sae, config=cfg, seed=0)
        counts = [int(w) for w in args.workers.split(",")]
        chunk = args.chunk_size or -(-args.vectors // max(counts))
        res["ray"] = [
            ray_throughput(est, vecs[: args.vectors], args.scale, w, chunk, args.ray_address,
                           tokens_per_vector)
            for w in counts
        ]  # fmt: skip
    report(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res


def report(res: dict) -> None:
    print(json.dumps(res, indent=2))
    th = res["torch_threads"]
    print(
        f"\n{res['tokens_per_vector']} tokens per vector ({len(res['prompts'])} prompts x "
        f"{res['rollouts']} rollouts x {res['seq_len']}); {th} torch thread(s); "
        f"{res['gflop_per_token']:.3f} GFLOP/token; GEMM {res['gemm_gflops'][th]:.1f} GFLOP/s; "
        f"roofline {res['roofline_tok_s']:.0f} tok/s"
    )
    for key, label in (("estimator", "sae-ts estimator"),
                       ("estimator_bridge", "sae-ts estimator, bridge"), ("official", "official loop"),
                       ("official_stock_layout", "official loop, TL stock layout")):  # fmt: skip
        if key in res:
            r = res[key]
            ratio = res.get(f"ratio_vs_{key}")
            if key == "estimator_bridge":
                print(f"bridge / hooked estimator throughput: {res['ratio_bridge_vs_hooked']:.2f}x")
            print(
                f"{label:32s} {r['tok_s']:7.1f} tok/s  {r['tok_per_cpu_s']:6.1f} tok/CPU-s  "
                f"{r['fraction_of_roofline']:.2f} of the roofline"
                + (f"  -> estimator / this = {ratio:.2f}x" if ratio else "")
            )
    for r in res.get("levers", []):
        own = r.get("fraction_of_1_thread_rooflines")
        print(
            f"lever: {r['lever']:56s} {r['tok_s']:7.1f} tok/s  {r['fraction_of_roofline']:.2f} of "
            "the roofline" + (f" ({own:.2f} of its 1-thread rooflines)" if own else "")
        )
    for r in res.get("ray", []):
        print(
            f"Ray, {r['workers']} worker(s) of 1 thread, {r['chunks']} chunks: "
            f"{r['vectors_s']:.3f} vectors/s ({r['tok_s']:.0f} tok/s)"
        )


if __name__ == "__main__":
    main()

"""Does a KL fine-tune close an embedded SAE's CE-loss gap? (issue #25's CE bar, Gemma 3 270M)

Usage (from the repository root)::

    python benchmarks/sae_kl_finetune.py --model gemma-3-270m --params decoder [--tokens 64000]
    python benchmarks/sae_kl_finetune.py --model gemma-3-270m --params encoder-decoder
    python benchmarks/sae_kl_finetune.py --model gemma-3-270m --diagnose   # no fine-tune

Fine-tunes the shipped SAE on KL(clean || spliced) + alpha * MSE / variance, the reconstruction
spliced in at the hook with attention sinks passed through (as CE-loss recovered is measured).
``--params decoder`` trains ``W_dec`` only, so every feature activation (and with it every effect
measured with the SAE) is unchanged; ``encoder-decoder`` trains ``W_enc``, ``b_enc`` and ``W_dec``
(thresholds and ``b_dec`` stay). Adam with a linear decay, batches of ``--batch`` windows of 128
training tokens. Prints explained variance, CE-loss recovered and L0 on the held-out and
out-of-domain splits before and after, on the same tokens (the sample ``sae_quality.py`` uses).

``--diagnose`` prints where the shipped SAE's next-token KL comes from instead: its share by
residual norm band and the share carried by the worst positions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from sae_ts.loading import load_default
from sae_ts.models import EMBEDDED_MODELS, document_start_id
from sae_ts.sae import evaluate_sae, make_windows, reconstruct_with_passthrough, sink_positions
from sae_ts.training import build_corpus

PARAMS = {"decoder": ("W_dec",), "encoder-decoder": ("W_enc", "b_enc", "W_dec")}
CONTEXT = 128


def _windows(model: Any, texts: list[str], seed: int) -> torch.Tensor:
    w = make_windows(model.tokenizer, texts, CONTEXT, document_start_id(model))
    return w[torch.randperm(w.shape[0], generator=torch.Generator().manual_seed(seed))]


def _evaluate(model: Any, sae: Any, splits: dict[str, torch.Tensor], args: Any) -> dict:
    out = {}
    for name, w in splits.items():
        res = evaluate_sae(
            model, sae, windows=w, max_tokens=args.eval_tokens, ce_max_tokens=args.ce_tokens
        )
        out[name] = {
            k: getattr(res, k)
            for k in ("explained_variance", "ce_recovered", "ce_recovered_ci", "ce_clean",
                      "ce_sae", "ce_mean_ablated", "l0")
        }  # fmt: skip
    return out


def _show(tag: str, r: dict) -> None:
    print(
        f"{tag:>6}: "
        + "  ".join(
            f"{n}: EV={v['explained_variance']:.3f} CE_recovered={v['ce_recovered']:.3f} "
            + ("[{:.3f}, {:.3f}] ".format(*v["ce_recovered_ci"]) if v["ce_recovered_ci"] else "")
            + f"(SAE {v['ce_sae']:.3f}) L0={v['l0']:.1f}"
            for n, v in r.items()
        ),
        flush=True,
    )


def _logprobs(model: Any, x: torch.Tensor, layer: int) -> torch.Tensor:
    """Next-token log-probabilities with ``x`` as the residual after ``layer``."""
    return torch.log_softmax(model(x, start_at_layer=layer + 1).float(), -1)


def _kl(clean: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Per-position KL(clean || logp) over the vocabulary."""
    return (clean.exp() * (clean - logp)).sum(-1)


def _diagnose(model: Any, sae: Any, windows: torch.Tensor, layer: int, n: int) -> None:
    kls, norms, sinks = [], [], []
    with torch.no_grad():
        for i in range(0, n, 4):
            x = model(windows[i : i + 4], stop_at_layer=layer + 1)
            spliced = reconstruct_with_passthrough(sae, x)
            kls.append(_kl(_logprobs(model, x, layer), _logprobs(model, spliced, layer)).flatten())
            norms.append(x.norm(dim=-1).flatten())
            sinks.append(sink_positions(sae, x).flatten())
    kl, norm, sink = torch.cat(kls), torch.cat(norms), torch.cat(sinks)
    kl, norm = kl[~sink], norm[~sink] / norm[~sink].median()
    print(f"{kl.numel()} non-sink held-out positions, mean next-token KL {kl.mean():.3f} nats")
    for lo, hi in ((0.0, 1.2), (1.2, 1.6), (1.6, 2.5), (2.5, float("inf"))):
        m = (norm >= lo) & (norm < hi)
        if m.any():
            print(
                f"  norm / median in [{lo}, {hi}): {int(m.sum())} positions, mean KL "
                f"{kl[m].mean():.3f}, share of the KL {kl[m].sum() / kl.sum():.3f}"
            )
    top = kl.sort(descending=True).values
    for q in (0.01, 0.05, 0.10, 0.25):
        print(
            f"  the worst {q:.0%} of positions carry {top[: int(q * len(top))].sum() / top.sum():.2f}"
        )


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="gemma-3-270m", choices=sorted(EMBEDDED_MODELS))
    p.add_argument("--params", default="decoder", choices=sorted(PARAMS))
    p.add_argument("--tokens", type=int, default=64_000, help="training tokens (steps x batch)")
    p.add_argument("--batch", type=int, default=2, help="windows of 128 tokens per step")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--alpha", type=float, default=1.0, help="weight of MSE / variance")
    p.add_argument("--eval-tokens", type=int, default=20_000, help="tokens per split, EV and L0")
    p.add_argument("--ce-tokens", type=int, default=4096, help="tokens per split, CE")
    p.add_argument("--diagnose", action="store_true", help="where the KL comes from; no training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cmd = "python benchmarks/sae_kl_finetune.py " + " ".join(sys.argv[1:])
    print(f"command: {cmd}  (seed {args.seed})", flush=True)
    model, sae, hook = load_default(model=args.model)
    layer = int(hook.split(".")[1])
    corpus = build_corpus(seed=0, heldout_fraction=0.05)
    held = {name: _windows(model, corpus[name], 1) for name in ("heldout", "ood")}
    if args.diagnose:
        _diagnose(model, sae, held["heldout"], layer, args.ce_tokens // CONTEXT)
        return 0
    for prm in model.parameters():
        prm.requires_grad_(False)
    for name, prm in sae.named_parameters():
        prm.requires_grad_(name in PARAMS[args.params])
    trained = [prm for name, prm in sae.named_parameters() if name in PARAMS[args.params]]
    before = _evaluate(model, sae, held, args)
    _show("before", before)
    train = _windows(model, corpus["train"], 123 + args.seed)
    n_steps = args.tokens // (CONTEXT * args.batch)
    opt = torch.optim.Adam(trained, lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / max(n_steps, 1))
    with torch.no_grad():  # the variance that normalises the MSE term
        x0 = model(train[:8], stop_at_layer=layer + 1)
        x0 = x0[~sink_positions(sae, x0)]
        var = float((x0 - x0.mean(0)).pow(2).sum(-1).mean())
    t0 = time.time()
    for step in range(n_steps):
        toks = train[step * args.batch : (step + 1) * args.batch]
        with torch.no_grad():
            x = model(toks, stop_at_layer=layer + 1)
            clean = _logprobs(model, x, layer)
        spliced = reconstruct_with_passthrough(sae, x)  # x itself at the sinks
        kl = _kl(clean, _logprobs(model, spliced, layer)).mean()
        mse = (spliced - x)[~sink_positions(sae, x)].pow(2).sum(-1).mean() / var
        loss = kl + args.alpha * mse
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 25 == 0 or step == n_steps - 1:
            el = time.time() - t0
            print(
                f"step {step + 1}/{n_steps} KL {kl.item():.4f} MSE/var {mse.item():.4f} "
                f"[{el:.0f}s]",
                flush=True,
            )
    after = _evaluate(model, sae, held, args)
    _show("before", before)
    _show("after", after)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": cmd, **vars(args), "before": before, "after": after}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``sae-ts features``: a browsable HTML page + JSON of every live SAE latent."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from ..errors import ConfigError
from ..features import build_feature_index, cache_batches, search_features, write_feature_browser
from ..models import EMBEDDED_MODEL, fetch_embedded_model, load_default_model, prepare_tokenizer
from ..sae import load_default_sae, load_sae, make_windows
from ..training.activations import ActivationCache
from ..training.corpus import eval_texts

__all__ = ["add_cli_commands"]


def _cmd_features(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    sae = load_sae(args.sae) if args.sae else load_default_sae()
    meta = {
        "sae": str(args.sae or "embedded SAE"),
        "hook_name": sae.cfg.metadata.hook_name,
        "model_name": sae.cfg.metadata.model_name,
    }
    if args.activations:
        roots = [Path(a) for a in args.activations]
        wins = [ActivationCache(r).tokens().to(torch.int64) for r in roots]
        offsets = [sum(w.shape[0] for w in wins[:i]) for i in range(len(wins))]
        windows = torch.cat(wins)
        tok = prepare_tokenizer(
            AutoTokenizer.from_pretrained(fetch_embedded_model()),
            EMBEDDED_MODEL.document_start_token,
        )
        meta["source"] = [str(r) for r in roots]
        index = build_feature_index(
            sae, cache_batches(roots, offsets), windows=windows, tokenizer=tok,
            n_top=args.n_top, meta=meta, progress=True,
        )  # fmt: skip
    else:
        model = load_default_model()
        texts: list[str] = []
        for name in args.texts:
            texts.extend(eval_texts(name, None))
        tok = model.tokenizer
        if tok is None or tok.bos_token_id is None:
            raise ConfigError("the model has no tokenizer with a document-start token")
        windows = make_windows(tok, texts, args.context_size, int(tok.bos_token_id))
        g = torch.Generator().manual_seed(args.seed)
        windows = windows[torch.randperm(windows.shape[0], generator=g)]
        windows = windows[: max(1, args.max_tokens // args.context_size)]
        meta["source"] = list(args.texts)
        index = build_feature_index(
            sae, windows=windows, tokenizer=tok, model=model, n_top=args.n_top,
            batch_size=args.batch_size, meta=meta, progress=True,
        )  # fmt: skip
    page = write_feature_browser(index, args.out, title=args.title)
    print(f"{index['n_live']} live latents of {index['d_sae']} over {index['n_tokens']} tokens")
    print(f"wrote {page} and {Path(args.out) / 'features.json'}")
    if args.search:
        print(
            f"latents whose top contexts contain {args.search!r}: "
            f"{search_features(index, args.search)[:20]}"
        )
    return 0


def add_cli_commands(subparsers: Any) -> None:
    """Add ``features`` to the ``sae-ts`` command line."""
    p = subparsers.add_parser(
        "features",
        help="write a browsable HTML page + JSON of every live SAE latent's top contexts",
        description="Encode text with an SAE (sinks excluded) and write index.html (search box), "
        "features.json and latents/NNNNN.json with each live latent's top-activating contexts, "
        "activation frequency and mean activation.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--sae", help="a sae-lens SAE directory (default: the embedded SAE)")
    p.add_argument(
        "--activations", nargs="+",
        help="activation cache folders written by train-sae (fast: no model forward passes)",
    )  # fmt: skip
    p.add_argument(
        "--texts", nargs="+", default=["heldout", "ood"],
        help="corpus splits or text files to run the model on (without --activations)",
    )  # fmt: skip
    p.add_argument("--max-tokens", type=int, default=50_000)
    p.add_argument("--context-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n-top", type=int, default=10)
    p.add_argument("--title", default="")
    p.add_argument("--search", help="also print the latents matching this word")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_features)

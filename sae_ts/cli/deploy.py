"""``sae-ts export``: a saved steering vector for Hugging Face or llama.cpp."""

from __future__ import annotations

import argparse
from typing import Any

from ..deploy import hf_layer, llamacpp_layer, to_hf_vector, to_llamacpp_gguf
from ..models import EMBEDDED_MODELS
from ..steering import SteeringVector

__all__ = ["add_cli_commands"]


def _layer_count(model_name: str) -> int | None:
    for spec in EMBEDDED_MODELS.values():
        if model_name in (spec.name, spec.key, spec.hub_name):
            return spec.n_layers
    return None


def _cmd_export(args: argparse.Namespace) -> int:
    sv = SteeringVector.load(args.vector)
    scale = sv.scale if args.scale is None else args.scale
    if args.to == "llamacpp":
        n = llamacpp_layer(sv.hook_name)
        count = args.layer_count or _layer_count(sv.model_name)
        path = to_llamacpp_gguf(sv, args.out, scale=scale, layer_count=count)
        print(f"wrote {path}: direction.{n} = {scale:g} x the vector ({sv.hook_name})")
        print(f"use: llama-cli -m MODEL.gguf --control-vector {path}")
    else:
        layer, side = hf_layer(sv.hook_name)
        path = to_hf_vector(sv, args.out, scale=scale)
        print(f"wrote {path}.safetensors: added to the {side} of model.layers[{layer}] x {scale:g}")
        print("use: with sae_ts.deploy.steer_hf(hf_model, sae_ts.deploy.from_hf_vector(PATH)): ...")
    return 0


def add_cli_commands(subparsers: Any) -> None:
    """Register ``sae-ts export``."""
    p = subparsers.add_parser(
        "export",
        help="export a saved steering vector for Hugging Face or llama.cpp",
        description="Write a saved SteeringVector (VECTOR.safetensors + .json) as a llama.cpp "
        "control-vector GGUF (--to llamacpp) or as a safetensors file keyed by the Hugging Face "
        "layer it is added to (--to hf, for sae_ts.deploy.steer_hf). Hooks that cannot be "
        "expressed there (attention or MLP hooks; the embeddings for llama.cpp) are refused.",
    )
    p.add_argument("vector", help="a saved steering vector (path without suffix)")
    p.add_argument("--to", choices=["hf", "llamacpp"], required=True)
    p.add_argument("--out", required=True, help="output path (a .gguf for llamacpp)")
    p.add_argument("--scale", type=float, default=None, help="default: the vector's own scale")
    p.add_argument(
        "--layer-count", type=int, default=None,
        help="the model's layers, for controlvector.layer_count (embedded models: known)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_export)

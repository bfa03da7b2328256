"""CLI commands of the core: ``estimate``, ``fit``, ``solve``, ``measure``, ``find-features``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..baselines import find_features
from ..effect_model import (
    FIT_METHODS,
    FirstTokenEffectModel,
    dataset_disruption,
    dataset_prior,
    fit,
    load_effect_model,
    shipped_fit_method,
)
from ..effects import (
    EffectConfig,
    EffectDataset,
    EffectEstimator,
    calibrate_scales,
    decoder_directions,
    estimate_effects,
    random_directions,
    typical_residual_norm,
)
from ..errors import ConfigError
from ..evaluation import measure_vector
from ..loading import Loaded, load_default
from ..models import EMBEDDED_MODELS, embedded_spec
from ..sae import load_default_sae, load_sae
from ..solver import Target, solve_in_decoder_span, solve_with_info
from ..steering import SteeringVector
from .common import (
    add_dataclass_args,
    add_model_args,
    add_ray_args,
    add_target_args,
    config_from_args,
    executor_from_args,
    load_from_args,
    loader_from_args,
    read_lines,
    target_from_args,
)

__all__ = ["add_cli_commands"]


def _cmd_estimate(args: argparse.Namespace) -> int:
    executor = executor_from_args(args, loader_from_args(args))  # before loading: fail fast
    loaded = load_from_args(args)
    model, sae, hook = loaded
    base = EffectConfig()
    cfg = config_from_args(
        EffectConfig, args, prompts=tuple(args.prompt) if args.prompt else base.prompts
    )
    if args.candidates == "random":
        vecs = random_directions(args.n, model.cfg.d_model, seed=args.seed)
    elif args.candidates == "decoder":
        vecs = decoder_directions(sae, n=args.n, seed=args.seed)
    else:
        vecs = load_file(args.candidates)["vectors"]
    steer_hook = args.steer_hook or hook
    est = EffectEstimator(model, sae, steer_hook=steer_hook, config=cfg, seed=args.seed)
    calib = None
    scale: float | None = args.scale
    if args.calibrate:
        scale = None

        def calib(v: torch.Tensor) -> torch.Tensor:
            return calibrate_scales(model, v, steer_hook, target_increase=args.target_loss_increase)

    elif scale is None:
        norm = typical_residual_norm(model, steer_hook)
        scale = round(args.scale_fraction * norm, 2)
        print(f"scale {scale} = {args.scale_fraction} x the per-token residual norm {norm:.1f}")
    try:
        ds = estimate_effects(
            est, vecs, scale, out_dir=args.out, chunk_size=args.chunk_size, calibrate=calib,
            executor=executor,
        )  # fmt: skip
    finally:
        if executor is not None:
            executor.close()
    ds.record["candidates"] = args.candidates
    stem = ds.save(Path(args.out) / "effects")
    print(
        f"{len(ds)} effects -> {stem}.safetensors (+ .json); mean |effect| {ds.effects.abs().mean():.4f}"
    )
    return 0


def _campaign_loaded(ds: EffectDataset, args: argparse.Namespace) -> Loaded:
    """The campaign's model and SAE (loaded from the record when --model is not given), for
    a fit method that measures something on them."""

    def key(name: str) -> str:  # an embedded model's key from its key, name or hub name
        try:
            return embedded_spec(name).key
        except ConfigError:
            return name

    measured = ds.record.get("model")
    if args.model is None and measured and key(measured) in EMBEDDED_MODELS:
        args.model = key(measured)
    if measured and args.model and key(measured) != key(args.model):
        raise ConfigError(
            f"the effects were measured on {measured!r}, not on --model {args.model!r}"
        )
    return load_from_args(args)


def _measured_of(ds: EffectDataset, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """What the fit method measures on the campaign's model at the campaign's hook, scale and
    prompts: ``disruption`` (next-token KL) or ``prior`` (the first-token prior); nothing for the
    other methods."""
    if args.method == "ridge_disruption":
        model = _campaign_loaded(ds, args).model
        print(
            f"measuring the next-token KL of {len(ds)} vectors at scale {float(ds.scales[0]):.4g}"
        )
        return {"disruption": dataset_disruption(model, ds)}
    if args.method == "ridge_first_token":
        loaded = _campaign_loaded(ds, args)
        print(
            f"measuring the first-token prior of {len(ds)} vectors at scale {float(ds.scales[0]):.4g}"
        )
        return {"prior": dataset_prior(loaded.model, loaded.sae, ds)}
    return {}


def _cmd_fit(args: argparse.Namespace) -> int:
    path = Path(args.effects)
    chunked = path.is_dir() and any(path.glob("chunk_*.safetensors"))
    ds = EffectDataset.load_dir(path) if chunked else EffectDataset.load(path)
    if args.max_vectors is not None:
        if args.max_vectors < 2:
            raise ConfigError("--max-vectors must be at least 2")
        ds = ds.head(min(args.max_vectors, len(ds)))
    if args.method is None:  # the method of the model shipped for the campaign's model
        args.method = shipped_fit_method(str(ds.record.get("model", "")))
        print(f"fit method {args.method} (the shipped effect model's for this model)")
    extra = _measured_of(ds, args)
    model, rep = fit(ds, method=args.method, holdout=args.holdout, seed=args.seed, **extra)
    stem = model.save(args.out)
    print(rep)
    print(f"effect model -> {stem}.safetensors (+ .json)")
    return 0


def _cmd_solve(args: argparse.Namespace) -> int:
    em = load_effect_model(args.effect_model)
    target = target_from_args(args)
    if args.first_token:
        if not isinstance(em, FirstTokenEffectModel):
            raise ConfigError(
                "--first-token needs a first-token effect model (sae-ts fit --method "
                f"ridge_first_token), not a {type(em).__name__}"
            )
        if args.in_decoder_span is not None or args.anchor is not None:
            raise ConfigError("--first-token combines with neither --in-decoder-span nor --anchor")
        api = "use the Python API (sae_ts.solve with lm= and sae=)"
        loaded = load_default(model=_embedded_key(em.record.get("model", ""), api))
        lm, sae = loaded.model, load_sae(args.sae) if args.sae else loaded.sae
        print(f"ascending the whole first-token model on {lm.cfg.model_name}")
        v, info = solve_with_info(em, target, args.method, lam=args.lam, lm=lm, sae=sae)
        if "first_token" in info:
            ft = info["first_token"]
            print(f"objective {ft['objective'][0]:.4g} -> {ft['objective'][1]:.4g} "
                  f"({ft['accepted']} of {ft['steps']} steps taken; cosine to the linear "
                  f"solution {ft['cos_to_linear']:.3f})")  # fmt: skip
    elif args.in_decoder_span is None:
        anchor = None if args.anchor is None else _anchor_of(args.anchor, em.record)
        v, info = solve_with_info(
            em, target, args.method, lam=args.lam, anchor=anchor, anchor_weight=args.anchor_weight
        )
        if "anchor_cosine" in info:
            print(f"cosine to the anchor {info['anchor_cosine']:.3f}")
    else:
        if args.method != "targeted":
            raise ConfigError("--in-decoder-span is a constraint of --method targeted")
        if args.anchor is not None:
            raise ConfigError("--in-decoder-span and --anchor do not combine")
        sae = load_sae(args.sae) if args.sae else _embedded_sae_of(em.record.get("model", ""))
        v, info = solve_in_decoder_span(em, sae.W_dec, target, args.in_decoder_span)
        print(f"decoder span: latents {info['span_ids']} weights "
              f"{[round(w, 3) for w in info['span_weights']]} (dropped {info['dropped']})")  # fmt: skip
    sv = SteeringVector(
        v, hook_name=em.record.get("steer_hook", ""), model_name=em.record.get("model", ""),
        method=args.method, scale=1.0, target=target.to_dict(), sae=em.record.get("sae_hook"),
        extra={"predicted": info["predicted"], "effect_model": str(args.effect_model)},
    )  # fmt: skip
    stem = sv.save(args.out)
    print(json.dumps({"method": args.method, "predicted": info["predicted"]}, indent=2))
    print(f"steering vector -> {stem}.safetensors (+ .json)")
    return 0


def _anchor_of(path: str, record: dict[str, Any]) -> torch.Tensor:
    """A saved steering vector's direction, refused unless it was made for the effect model's
    model and steering hook."""
    sv = SteeringVector.load(path)
    want = (record.get("model", ""), record.get("steer_hook", ""))
    if (sv.model_name, sv.hook_name) != want:
        raise ConfigError(
            f"--anchor {path} is a vector for {sv.model_name!r} at {sv.hook_name!r}; the effect "
            f"model was measured on {want[0]!r} at {want[1]!r}"
        )
    return sv.vector


def _embedded_key(model_name: str, instead: str) -> str:
    """The key of the embedded model an effect model was measured on; ``instead`` says what a
    user with another model does."""
    try:
        return embedded_spec(model_name).key
    except ConfigError as e:
        raise ConfigError(
            f"the effect model was measured on {model_name!r}, not an embedded model: {instead}"
        ) from e


def _embedded_sae_of(model_name: str) -> Any:
    """The shipped SAE of the embedded model an effect model was measured on."""
    return load_default_sae(model=_embedded_key(model_name, "pass its SAE with --sae DIR"))


def _cmd_measure(args: argparse.Namespace) -> int:
    model, sae, _ = load_from_args(args)
    sv = SteeringVector.load(args.vector, model=model)
    cfg = config_from_args(EffectConfig, args)
    est = EffectEstimator(model, sae, steer_hook=sv.hook_name, config=cfg, seed=args.seed)
    em = load_effect_model(args.effect_model) if args.effect_model else None
    target = target_from_args(args) if args.features else Target.from_dict(sv.target or {})
    m = measure_vector(est, sv.vector, args.scale, target, effect_model=em, progress=True)
    print(json.dumps(m.row(), indent=2))
    return 0


def _cmd_find(args: argparse.Namespace) -> int:
    model, sae, hook = load_from_args(args)
    pos = list(args.pos or []) + read_lines(args.pos_file)
    neg = list(args.neg or []) + read_lines(args.neg_file)
    for fid, score in find_features(model, sae, pos, neg, hook, top=args.top):
        print(f"{fid}\t{score:.4f}")
    return 0


def add_cli_commands(sub: Any) -> None:
    """Register the core commands."""
    p = sub.add_parser(
        "estimate", help="estimate SAE-feature effects of candidate steering vectors"
    )
    add_model_args(p)
    p.add_argument("--out", required=True, help="output directory (chunks, manifest, effects)")
    p.add_argument(
        "--candidates", default="decoder", help="random | decoder | FILE.safetensors with 'vectors'"
    )
    p.add_argument("--n", type=int, default=256, help="number of candidate vectors")
    p.add_argument("--scale", type=float, default=None, help="fixed scale (overrides the fraction)")
    p.add_argument(
        "--scale-fraction",
        type=float,
        default=0.5,
        help="scale as a fraction of the typical per-token residual norm at the steering hook "
        "(default 0.5: chosen by the noise-ceiling probe, see the README)",
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="calibrate each vector's scale to a loss increase instead (the old default; on the "
        "embedded model +0.5 nats gives ~0.3 x the norm, where effects are below sampling noise)",
    )
    p.add_argument("--target-loss-increase", type=float, default=0.5, help="nats, for calibration")
    add_dataclass_args(
        p.add_argument_group("effect protocol (EffectConfig)"), EffectConfig, exclude=("positions",)
    )
    p.add_argument("--prompt", action="append", help="prompt (repeatable; default: the paper's 14)")
    p.add_argument("--steer-hook", default=None, help="default: the SAE's hook")
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    add_ray_args(p)
    p.set_defaults(func=_cmd_estimate)

    p = sub.add_parser("fit", help="fit the linear effect model effect = v @ W + b")
    p.add_argument(
        "--effects",
        required=True,
        help="an effect dataset (DIR/effects) or a campaign's chunk directory (data/effects/train)",
    )
    p.add_argument("--out", required=True)
    p.add_argument(
        "--method",
        choices=list(FIT_METHODS),
        default=None,
        help="ridge (CV strength), ridge_per_feature (a LOO strength per feature), adam (the "
        "paper's fit), ridge_disruption (ridge plus a measured next-token-KL term) or "
        "ridge_first_token (ridge plus the measured first-token prior); the last two load the "
        "campaign's model (and SAE) to measure their term. Default: the method of the effect model shipped for "
        "the campaign's model (ridge for smollm2-135m and for hub models)",
    )
    add_model_args(p)
    p.add_argument(
        "--max-vectors",
        type=int,
        default=None,
        help="fit on the first N vectors only (a campaign's chunks are a shuffled prefix)",
    )
    p.add_argument("--holdout", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("solve", help="solve for a steering vector that hits target features")
    p.add_argument("--effect-model", required=True)
    add_target_args(p)
    p.add_argument("--method", choices=["sae_ts", "pinv", "targeted"], default="targeted")
    p.add_argument("--lam", type=float, default=1.0, help="λ of the paper rule")
    p.add_argument(
        "--in-decoder-span", type=int, default=None, metavar="K",
        help="targeted only: solve within the target latents' own decoder rows and K helper rows, "
        "never against a target latent (solve_in_decoder_span; the demo uses K=0 on Gemma 3 270M)",
    )  # fmt: skip
    p.add_argument(
        "--first-token", action="store_true",
        help="targeted with a first-token effect model (fit method ridge_first_token): ascend the "
        "whole model from the linear part's solution, its prior measured on the embedded model "
        "the effect model was fitted on",
    )  # fmt: skip
    p.add_argument(
        "--anchor", default=None, metavar="VECTOR",
        help="targeted only: a saved steering vector (e.g. a CAA vector) to stay near; the effect "
        "model corrects it instead of replacing it (solve(..., anchor=))",
    )  # fmt: skip
    p.add_argument(
        "--anchor-weight",
        type=float,
        default=1.0,
        help="the anchor term's weight relative to the target term (default 1: equal)",
    )
    p.add_argument(
        "--sae", default=None,
        help="with --in-decoder-span or --first-token: a sae-lens SAE directory (default: the "
        "embedded model's)",
    )  # fmt: skip
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_solve)

    p = sub.add_parser("measure", help="measure a steering vector's effect on SAE features")
    add_model_args(p)
    p.add_argument("--vector", required=True, help="a saved SteeringVector")
    p.add_argument("--scale", type=float, required=True)
    add_target_args(p, required=False)  # default target: the vector's own
    p.add_argument("--effect-model", default=None, help="also report predictions")
    # one vector's effect needs more rollouts per prompt than the 1 used when fitting
    add_dataclass_args(p, EffectConfig, include=("rollouts", "seq_len"), defaults={"rollouts": 4})
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_measure)

    p = sub.add_parser(
        "find-features", help="rank SAE latents by how much more they fire on positive texts"
    )
    add_model_args(p)
    p.add_argument("--pos", action="append", help="positive text (repeatable)")
    p.add_argument("--neg", action="append", help="negative text (repeatable)")
    p.add_argument("--pos-file", default=None, help="one positive text per line")
    p.add_argument("--neg-file", default=None, help="one negative text per line")
    p.add_argument("--top", type=int, default=10)
    p.set_defaults(func=_cmd_find)

"""What several commands share: the model/SAE flags, flags generated from config dataclasses,
and small parsers."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch

from ..backends import BACKENDS, check_backend
from ..errors import ConfigError
from ..executors import RayExecutor
from ..loading import Loaded, load, load_default
from ..models import DEFAULT_MODEL, EMBEDDED_MODELS
from ..solver import Target, parse_feature_spec, parse_id_list

__all__ = [
    "DTYPES",
    "add_dataclass_args",
    "add_model_args",
    "add_ray_args",
    "config_from_args",
    "executor_from_args",
    "load_from_args",
    "loader_from_args",
    "parse_features",
    "read_lines",
]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
C = TypeVar("C")


# ----------------------------------------------------------------------------------------------
# The one set of model/SAE flags


def add_model_args(p: argparse.ArgumentParser, sae_dir: bool = False) -> None:
    """--model/--sae-release/--sae-id (hub) or the embedded default; --device (cpu), --dtype.

    ``sae_dir`` also offers ``--sae DIR`` (a sae-lens SAE directory, read with the embedded model
    or with ``--model``).
    """
    g = p.add_argument_group(
        "model and SAE (default: the embedded SmolLM2-135M-Instruct + its SAE)"
    )
    g.add_argument(
        "--model",
        default=None,
        help="an embedded model (smollm2-135m, gemma-3-270m: offline, with sae-ts's SAE) or a "
        "TransformerLens model name from the hub, e.g. gpt2-small",
    )
    g.add_argument(
        "--sae-release",
        "--release",
        dest="sae_release",
        default=None,
        help="sae-lens release, e.g. gpt2-small-res-jb",
    )
    g.add_argument(
        "--sae-id", default=None, help="SAE id in the release, e.g. blocks.8.hook_resid_pre"
    )
    if sae_dir:
        g.add_argument("--sae", default=None, help="a sae-lens SAE directory")
    g.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, mps ...")
    g.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    g.add_argument(
        "--backend",
        default="hooked",
        choices=list(BACKENDS),
        help="TransformerLens model class: hooked (HookedTransformer, default) or bridge "
        "(TransformerBridge around the Hugging Face model)",
    )


def load_from_args(args: argparse.Namespace) -> Loaded:
    """Load the model+SAE named by :func:`add_model_args`'s options."""
    dtype = DTYPES[args.dtype]
    backend = check_backend(getattr(args, "backend", None) or "hooked")
    sae_path = getattr(args, "sae", None)
    embedded = args.model is None or args.model in EMBEDDED_MODELS
    if sae_path:
        if args.sae_release or args.sae_id:
            raise ConfigError("--sae and --sae-release/--sae-id exclude each other")
        return load(
            args.model or DEFAULT_MODEL, sae_path, device=args.device, dtype=dtype, backend=backend
        )
    if args.sae_release or args.sae_id:
        if not (args.sae_release and args.sae_id):
            raise ConfigError("--sae-release and --sae-id go together")
        model = args.model or DEFAULT_MODEL
        return load(
            model, args.sae_release, args.sae_id, device=args.device, dtype=dtype, backend=backend
        )
    if not embedded:
        raise ConfigError(
            f"--model {args.model} is a hub model: name its SAE with --sae-release and --sae-id "
            f"(or --sae DIR); only the embedded models {sorted(EMBEDDED_MODELS)} have one shipped"
        )
    return load_default(
        device=args.device, dtype=dtype, model=args.model or DEFAULT_MODEL, backend=backend
    )


def loader_from_args(args: argparse.Namespace) -> Callable[[], Loaded]:
    """:func:`load_from_args` with this command's model/SAE flags only: picklable for workers."""
    keys = ("model", "sae_release", "sae_id", "sae", "device", "dtype", "backend")
    flags = argparse.Namespace(**{k: getattr(args, k, None) for k in keys})
    return functools.partial(load_from_args, flags)


# ----------------------------------------------------------------------------------------------
# Ray


def add_ray_args(p: argparse.ArgumentParser) -> None:
    """``--ray [ADDRESS]``, ``--workers``, ``--gpus-per-worker``, ``--cpus-per-worker``."""
    g = p.add_argument_group("Ray cluster (needs: pip install 'sae-ts[ray]')")
    g.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run on Ray workers: ADDRESS of a running cluster (auto, HOST:6379, "
        "ray://HOST:10001); without it, ray.init()'s default ($RAY_ADDRESS, a cluster started on "
        "this machine, else a new local one)",
    )
    g.add_argument("--workers", type=int, default=1, help="Ray actors, one model each")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, help="e.g. 1, or 0.5 to share")
    g.add_argument(
        "--cpus-per-worker",
        type=int,
        default=1,
        help="CPUs reserved per worker, and its torch threads (default 1)",
    )


def executor_from_args(args: argparse.Namespace, load: Callable[[], Loaded]) -> RayExecutor | None:
    """The :class:`RayExecutor` that ``--ray`` asks for (``None`` without ``--ray``)."""
    if args.ray is None:
        if args.workers != 1 or args.gpus_per_worker or args.cpus_per_worker != 1:
            raise ConfigError("--workers, --gpus-per-worker and --cpus-per-worker need --ray")
        return None
    return RayExecutor(
        load,
        args.workers,
        address=args.ray or None,
        gpus_per_worker=args.gpus_per_worker,
        cpus_per_worker=args.cpus_per_worker,
    )


# ----------------------------------------------------------------------------------------------
# Flags generated from config dataclasses


def _flag_type(tp: Any) -> tuple[Any, list[Any] | None] | None:
    """(argparse type, choices) for a field type; None if it cannot be a flag."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _flag_type(args[0]) if len(args) == 1 else None
    if origin is Literal:
        choices = list(typing.get_args(tp))
        return type(choices[0]), choices
    if tp in (int, float, str, bool):
        return tp, None
    return None


def add_dataclass_args(
    p: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    include: Collection[str] | None = None,
    exclude: Collection[str] = (),
    defaults: Mapping[str, Any] | None = None,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """One ``--field-name`` flag per field of dataclass ``cls``, typed from the annotations.

    Fields whose type cannot be a flag (dicts, tuples...) are skipped. Each flag's ``dest`` is the
    field name, so :func:`config_from_args` can build ``cls`` back. Returns the field names added.
    """
    hints = typing.get_type_hints(cls)
    added = []
    for f in dataclasses.fields(cls):
        if (include is not None and f.name not in include) or f.name in exclude:
            continue
        kind = _flag_type(hints[f.name])
        if kind is None:
            continue
        tp, choices = kind
        if defaults and f.name in defaults:
            default = defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        names = [f"--{f.name.replace('_', '-')}", *((aliases or {}).get(f.name, ()))]
        kw: dict[str, Any] = {"dest": f.name, "default": default}
        shown = "the preset" if default is argparse.SUPPRESS else "%(default)s"
        kw["help"] = f"{cls.__name__}.{f.name} (default: {shown})"
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = tp
            if choices:
                kw["choices"] = choices
        p.add_argument(*names, **kw)
        added.append(f.name)
    return added


def config_from_args(cls: type[C], args: argparse.Namespace, **overrides: Any) -> C:
    """Build dataclass ``cls`` from the flags :func:`add_dataclass_args` added (and overrides)."""
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}  # type: ignore[arg-type]
    kw.update(overrides)
    return cls(**kw)


# ----------------------------------------------------------------------------------------------
# Small parsers


def parse_features(spec: str | None, what: str = "--features") -> dict[int, float]:
    """``"12:1.0,45:0.5,7"`` -> ``{12: 1.0, 45: 0.5, 7: 1.0}``
    (:func:`sae_ts.solver.parse_feature_spec`)."""
    return parse_feature_spec(spec, what)


def target_from_args(args: argparse.Namespace) -> Target:
    """The :class:`~sae_ts.solver.Target` of ``--features``, ``--hold`` and ``--suppress``."""
    return Target(
        parse_features(args.features),
        parse_id_list(args.hold, "--hold"),
        parse_features(args.suppress, "--suppress"),
    )


def add_target_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """``--features`` (to raise), ``--hold`` and ``--suppress``."""
    p.add_argument(
        "--features",
        required=required,
        default=None,
        help="features to raise, e.g. 123:1.0,456:0.5",
    )
    p.add_argument("--hold", default=None, help="features to keep still, e.g. 7,8")
    p.add_argument("--suppress", default=None, help="features to push down, e.g. 9:1.0")


def read_lines(path: str | None) -> list[str]:
    """The non-empty lines of a text file (none without a path)."""
    if not path:
        return []
    return [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]

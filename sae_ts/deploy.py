"""Deploy: use an sae-ts steering vector where models are served, on the same weights.

* :func:`steer_hf` adds a :class:`~sae_ts.steering.SteeringVector` to a Hugging Face causal LM at
  the decoder layer that matches its TransformerLens hook, with the same ``positions`` options as
  :func:`sae_ts.steer`, and always removes its hook.
* :func:`to_llamacpp_gguf` writes a llama.cpp control-vector GGUF (``--control-vector``,
  ``--control-vector-scaled``), the format repeng writes too; :func:`from_llamacpp_gguf` reads
  it back, provenance included.
* :func:`to_hf_vector` / :func:`from_hf_vector`: the vector as a safetensors file keyed by the
  Hugging Face layer it is added to, with a JSON record, for :func:`steer_hf` elsewhere.

The one table that maps TransformerLens hooks to each target's layers is :data:`HOOK_MAP`;
hooks it cannot express (attention-internal hooks, the MLP's, and for llama.cpp the residual
stream before and after block 0) are refused with a clear error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch

from .artifacts import load_artifact, save_artifact, versions
from .errors import ArtifactError, ConfigError, InputTypeError
from .steering import SteeringHook, SteeringVector, check_vector
from .types import Positions

__all__ = [
    "HOOK_MAP",
    "from_hf_vector",
    "from_llamacpp_gguf",
    "hf_layer",
    "llamacpp_layer",
    "steer_hf",
    "to_hf_vector",
    "to_llamacpp_gguf",
]

HOOK_MAP: dict[str, dict[str, str]] = {
    "hook_resid_post": {
        "hf": "output of model.layers[L] (the residual stream after block L)",
        "llamacpp": "direction.L: llama.cpp adds direction.N to the output of its block N "
        "(0-based); refused for L = 0 (no direction reaches block 0)",
    },
    "hook_resid_pre": {
        "hf": "input of model.layers[L] (for L = 0: the scaled embeddings)",
        "llamacpp": "direction.(L-1) (the output of block L-1); refused for L < 2",
    },
}
"""TransformerLens hook -> where each target adds the vector (``L``: the block index)."""

_HOOK = re.compile(r"blocks\.(\d+)\.(hook_resid_post|hook_resid_pre)")


def _parse(hook_name: str, target: str) -> tuple[int, str]:
    m = _HOOK.fullmatch(hook_name)
    if m is None:
        raise ConfigError(
            f"hook {hook_name!r} cannot be expressed for {target}: only the residual stream "
            f"(blocks.L.hook_resid_post / hook_resid_pre) maps to a layer there; see HOOK_MAP"
        )
    return int(m.group(1)), m.group(2)


def hf_layer(hook_name: str) -> tuple[int, Literal["output", "input"]]:
    """The Hugging Face decoder layer and side (its output or input) of a TransformerLens hook."""
    layer, kind = _parse(hook_name, "Hugging Face")
    return layer, "output" if kind == "hook_resid_post" else "input"


def llamacpp_layer(hook_name: str) -> int:
    """The llama.cpp control-vector index ``N`` (tensor ``direction.N``) of a TransformerLens hook.

    llama.cpp's loader writes ``direction.N`` at offset ``n_embd * (N - 1)`` of its buffer and its
    applier reads block ``il`` (0-based) from offset ``n_embd * (il - 1)``, looping from
    ``il = 1``; the two cancel, so ``direction.N`` is added to the output of block ``N``: the
    residual stream TransformerLens calls ``blocks.N.hook_resid_post``. Block 0's output (and
    anything before it) cannot be steered. Checked by running llama.cpp on the embedded model in
    ``benchmarks/llamacpp_parity.py``.
    """
    layer, kind = _parse(hook_name, "llama.cpp")
    n = layer if kind == "hook_resid_post" else layer - 1
    if n < 1:
        raise ConfigError(
            f"{hook_name} cannot be expressed as a llama.cpp control vector: llama.cpp steers the "
            "outputs of blocks 1 and later only (direction.N is added after block N)"
        )
    return n


def _decoder_layers(hf_model: Any) -> Any:
    inner = hf_model.get_decoder() if hasattr(hf_model, "get_decoder") else None
    layers = getattr(inner, "layers", None) or getattr(
        getattr(hf_model, "model", None), "layers", None
    )
    if layers is None:
        raise InputTypeError(
            f"cannot find the decoder layers of {type(hf_model).__name__} (model.layers)"
        )
    return layers


def _as_vector(steering_vector: SteeringVector | torch.Tensor, hook_name: str | None) -> tuple:
    if isinstance(steering_vector, SteeringVector):
        return steering_vector.vector, hook_name or steering_vector.hook_name, steering_vector.scale
    if isinstance(steering_vector, torch.Tensor):
        if hook_name is None:
            raise ConfigError("a bare tensor needs hook_name= (e.g. 'blocks.12.hook_resid_post')")
        return steering_vector, hook_name, 1.0
    raise InputTypeError(f"expected a SteeringVector or a tensor, not {type(steering_vector)}")


@contextmanager
def steer_hf(
    hf_model: Any,
    steering_vector: SteeringVector | torch.Tensor,
    scale: float | None = None,
    positions: Positions = "all",
    hook_name: str | None = None,
) -> Iterator[SteeringHook]:
    """Add ``scale * vector`` to a Hugging Face causal LM inside the block; always remove it.

    The layer comes from the vector's TransformerLens hook (:func:`hf_layer`); ``scale`` defaults
    to the vector's own. ``positions`` works as in :func:`sae_ts.steer`, through HF's KV cache
    too (one ``steer_hf`` block per generation, as there). Example::

        with steer_hf(hf_model, SteeringVector.load("runs/demo/vector_targeted")):
            out = hf_model.generate(ids, max_new_tokens=20, do_sample=False)
    """
    vector, hook, own_scale = _as_vector(steering_vector, hook_name)
    layer, side = hf_layer(hook)
    layers = _decoder_layers(hf_model)
    if not 0 <= layer < len(layers):
        raise ConfigError(f"{hook}: the model has {len(layers)} decoder layers")
    d_model = int(hf_model.config.hidden_size)
    check_vector(vector, d_model)
    steer = SteeringHook(vector, own_scale if scale is None else scale, positions)

    def on_output(module: Any, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (steer(output[0]), *output[1:])
        return steer(output)

    def on_input(module: Any, args: Any, kwargs: Any) -> Any:
        if args:
            return (steer(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": steer(kwargs["hidden_states"])}

    if side == "output":
        handle = layers[layer].register_forward_hook(on_output)
    else:
        handle = layers[layer].register_forward_pre_hook(on_input, with_kwargs=True)
    try:
        yield steer
    finally:
        handle.remove()


def _record(sv: SteeringVector) -> dict[str, Any]:
    return {
        "hook_name": sv.hook_name, "model_name": sv.model_name, "method": sv.method,
        "scale": sv.scale, "target": sv.target, "sae": sv.sae, "seed": sv.seed, "extra": sv.extra,
    }  # fmt: skip


def to_llamacpp_gguf(
    steering_vector: SteeringVector,
    path: str | Path,
    scale: float | None = None,
    layer_count: int | None = None,
    model_hint: str | None = None,
) -> Path:
    """Write a llama.cpp control-vector GGUF holding ``scale * vector`` (scale: the vector's own).

    One tensor ``direction.N`` at the layer :func:`llamacpp_layer` gives, and the metadata
    llama.cpp reads (``controlvector.model_hint``, ``controlvector.layer_count``); sae-ts's
    provenance goes in ``sae_ts.provenance`` for :func:`from_llamacpp_gguf`. Use it with
    ``llama-cli --control-vector FILE`` (or ``--control-vector-scaled FILE 1.0``).
    """
    from gguf import GGUFWriter

    if not isinstance(steering_vector, SteeringVector):
        raise InputTypeError("to_llamacpp_gguf takes a SteeringVector (it needs the hook)")
    n = llamacpp_layer(steering_vector.hook_name)
    s = steering_vector.scale if scale is None else float(scale)
    if layer_count is not None and n > layer_count:
        raise ConfigError(f"layer {n} is beyond the model's {layer_count} layers")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    writer = GGUFWriter(str(tmp), "controlvector")
    writer.add_string("controlvector.model_hint", model_hint or steering_vector.model_name)
    writer.add_uint32("controlvector.layer_count", int(layer_count or n))
    prov = {**_record(steering_vector), "scale_written": s, "direction_index": n, **versions()}
    writer.add_string("sae_ts.provenance", json.dumps(prov, default=str))
    data = (steering_vector.vector.detach().float().cpu() * s).numpy()
    writer.add_tensor(f"direction.{n}", data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(p)
    return p


def from_llamacpp_gguf(path: str | Path) -> SteeringVector:
    """Read back a control-vector GGUF written by :func:`to_llamacpp_gguf`.

    The vector comes back unscaled with its provenance (hook, model, method, scale). A GGUF of
    another origin (one tensor, no provenance) is refused with a clear error.
    """
    from gguf import GGUFReader

    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"no GGUF at {p}")
    try:
        reader = GGUFReader(str(p))
    except Exception as e:  # gguf raises assorted errors for damaged files
        raise ArtifactError(f"cannot read {p} as GGUF: {type(e).__name__}: {e}") from e
    field = reader.fields.get("sae_ts.provenance")
    if field is None:
        raise ArtifactError(f"{p} has no sae_ts.provenance: not written by sae-ts")
    prov = json.loads(bytes(field.parts[field.data[0]]).decode())
    tensors = {t.name: t for t in reader.tensors}
    name = f"direction.{prov['direction_index']}"
    if name not in tensors:
        raise ArtifactError(f"{p} lacks {name}")
    s = float(prov["scale_written"])
    vec = torch.tensor(tensors[name].data.copy(), dtype=torch.float32).flatten()
    if s != 0:
        vec = vec / s
    keys = ("hook_name", "model_name", "method", "scale", "target", "sae", "seed", "extra")
    return SteeringVector(vec, **{k: prov[k] for k in keys if prov.get(k) is not None})


def to_hf_vector(
    steering_vector: SteeringVector, path: str | Path, scale: float | None = None
) -> Path:
    """Save ``scale * vector`` keyed by its Hugging Face layer (``layers.L.output`` or
    ``.input``), with the provenance record; :func:`from_hf_vector` reads it back."""
    layer, side = hf_layer(steering_vector.hook_name)
    s = steering_vector.scale if scale is None else float(scale)
    rec = {"kind": "hf_steering_vector", **_record(steering_vector), "scale_written": s,
           "hf_layer": layer, "hf_side": side,
           "convention": f"add to the {side} of model.layers[{layer}] at every position"}  # fmt: skip
    return save_artifact(path, {f"layers.{layer}.{side}": steering_vector.vector * s}, rec)


def from_hf_vector(path: str | Path) -> SteeringVector:
    """Read a vector saved by :func:`to_hf_vector` (unscaled, with its provenance)."""
    t, rec = load_artifact(path, kind="hf_steering_vector",
                           fields=("hook_name", "model_name", "method", "scale_written"))  # fmt: skip
    name = f"layers.{rec.get('hf_layer')}.{rec.get('hf_side')}"
    if name not in t:
        raise ArtifactError(f"{path}: no tensor {name!r}")
    s = float(rec["scale_written"])
    vec = t[name].float() / s if s else t[name].float()
    keys = ("hook_name", "model_name", "method", "scale", "target", "sae", "seed", "extra")
    return SteeringVector(vec, **{k: rec[k] for k in keys if rec.get(k) is not None})

"""The embedded SAE: loading, sink-aware encoding and splicing, and quality evaluation.

sae-ts ships one SAE per embedded model, trained with sae-lens on ``blocks.12.hook_resid_post``
(see :mod:`sae_ts.training`): a TopK SAE for SmolLM2-135M-Instruct and a JumpReLU SAE for Gemma 3
270M. Each is an ordinary sae-lens SAE directory (``cfg.json`` + ``sae_weights.safetensors``),
stored in fp16 and loaded in fp32; ``sae_lens.SAE.load_from_disk`` reads it with no sae-ts code.
Every encoding goes through the SAE's own ``encode``, so a JumpReLU SAE's thresholds apply.

Attention sinks. Position 0 and a few delimiter tokens carry residual norms ~100× the median;
the SAE never saw them in training. :func:`sink_positions` marks them with the one sink rule
(:func:`sae_ts._util.sink_mask`: position 0, and norms above ``sink_ratio`` × the reference norm
recorded in the SAE's metadata), :func:`encode` zeroes
their feature activations and :func:`reconstruct_with_passthrough` returns the original activation
there, so splicing the SAE into the model leaves sinks untouched.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE

from ._util import DEFAULT_SINK_RATIO, hook_layer, sha256_file, sink_mask
from .backends import run_with_cache, run_with_hooks
from .errors import ConfigError, MissingFileError
from .types import SAELike

__all__ = [
    "DEFAULT_SAE_DIR",
    "EMBEDDED_SAE_DIRS",
    "SAEEvalResult",
    "check_pair",
    "default_sae_dir",
    "encode",
    "evaluate_sae",
    "load_default_sae",
    "load_sae",
    "make_windows",
    "reconstruct_with_passthrough",
    "reconstruction_stats",
    "sink_mask",
    "sink_positions",
    "sink_reference_norm",
    "splice_hook",
]

_ASSETS = Path(__file__).resolve().parent / "assets"
EMBEDDED_SAE_DIRS: dict[str, Path] = {
    "smollm2-135m": _ASSETS / "smollm2-135m-res12-topk",
    "gemma-3-270m": _ASSETS / "gemma-3-270m-res12-jumprelu",
}
"""The SAE sae-ts ships for each embedded model (see :data:`sae_ts.models.EMBEDDED_MODELS`)."""
DEFAULT_SAE_DIR: Path = EMBEDDED_SAE_DIRS["smollm2-135m"]
_SAE_FILES = ("cfg.json", "sae_weights.safetensors")


# ----------------------------------------------------------------------------------------------
# Loading


def _check_sae_dir(path: Path) -> None:
    if not path.is_dir():
        raise MissingFileError(f"no SAE directory at {path}")
    missing = [f for f in _SAE_FILES if not (path / f).exists()]
    if missing:
        raise MissingFileError(f"SAE directory {path} lacks {', '.join(missing)}")
    try:
        cfg = json.loads((path / "cfg.json").read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"corrupt SAE config {path / 'cfg.json'}: {e}") from e
    if not isinstance(cfg, dict) or not isinstance(cfg.get("metadata", {}), dict):
        raise ConfigError(f"corrupt SAE config {path / 'cfg.json'}: not a sae-lens config")
    missing = [k for k in ("d_in", "d_sae") if k not in cfg]
    if not (cfg.get("metadata", {}).get("hook_name") or cfg.get("hook_name")):
        missing.append("hook_name")
    if missing:
        raise ConfigError(f"SAE config {path / 'cfg.json'} lacks {', '.join(missing)}")
    digest = cfg.get("metadata", {}).get("weights_sha256")
    if digest is not None and sha256_file(path / "sae_weights.safetensors") != digest:
        raise ConfigError(
            f"{path / 'sae_weights.safetensors'} does not match the weights_sha256 in its cfg.json: "
            "the file is damaged or was replaced"
        )


def load_sae(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> SAE[Any]:
    """Load a sae-lens SAE directory (``cfg.json`` + ``sae_weights.safetensors``) in ``dtype``."""
    p = Path(path)
    _check_sae_dir(p)
    try:
        sae = SAE.load_from_disk(
            str(p), device=str(device), dtype=str(dtype).removeprefix("torch.")
        )
    except Exception as e:  # sae-lens raises assorted errors for corrupt weight files
        raise ConfigError(f"cannot load the SAE in {p}: {type(e).__name__}: {e}") from e
    sae.eval()
    for name, param in sae.named_parameters():
        if not torch.isfinite(param).all():
            raise ConfigError(f"SAE in {p}: parameter {name!r} contains NaN or inf")
    return sae


def default_sae_dir(model: str = "smollm2-135m") -> Path:
    """The directory of the SAE shipped for embedded model ``model`` (a registry key)."""
    if model not in EMBEDDED_SAE_DIRS:
        raise ConfigError(
            f"no SAE is shipped for model {model!r}; the embedded models are "
            f"{sorted(EMBEDDED_SAE_DIRS)}"
        )
    if model == "smollm2-135m":  # read at call time, so tests can point it elsewhere
        return DEFAULT_SAE_DIR
    return EMBEDDED_SAE_DIRS[model]


def load_default_sae(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    model: str = "smollm2-135m",
) -> SAE[Any]:
    """The SAE shipped with sae-ts for an embedded model (both read ``blocks.12.hook_resid_post``).

    SmolLM2-135M: a TopK SAE, 4,096 latents. Gemma 3 270M: a JumpReLU SAE in sae-lens's format.
    """
    if isinstance(device, str) and device in EMBEDDED_SAE_DIRS:
        raise ConfigError(
            f"{device!r} was passed as the device; name the model with model={device!r}"
        )
    path = default_sae_dir(model)
    if not (path / "sae_weights.safetensors").exists():
        raise MissingFileError(
            f"the embedded SAE for {model} is missing from {path}; reinstall sae-ts or rebuild "
            f"it with `sae-ts train-sae --model {model}`"
        )
    return load_sae(path, device=device, dtype=dtype)


def check_pair(model: Any, sae: SAELike, hook_name: str | None = None) -> str:
    """The model/SAE compatibility check; returns the hook name the SAE reads.

    ``hook_name`` defaults to the SAE's ``cfg.metadata.hook_name``. Refused, with a clear
    :class:`~sae_ts.errors.ConfigError`: no hook named, a hook that is not a hook point of the
    model, an SAE trained on another hook than ``hook_name``, or (at a residual-stream hook) an
    SAE width ``d_in`` other than the model's ``d_model``.
    """
    meta = getattr(sae.cfg, "metadata", None)
    sae_hook = getattr(meta, "hook_name", None) if meta is not None else None
    hook = hook_name or sae_hook
    if not hook:
        raise ConfigError("the SAE's metadata names no hook_name; pass the hook name")
    if hook not in model.hook_dict:
        raise ConfigError(
            f"hook {hook!r} is not a hook point of model {model.cfg.model_name!r} "
            f"({model.cfg.n_layers} layers)"
        )
    if sae_hook and sae_hook != hook:
        raise ConfigError(f"SAE was trained on hook {sae_hook!r}, not {hook!r}")
    d_in = int(sae.cfg.d_in)
    if d_in != model.cfg.d_model and "resid" in hook:
        raise ConfigError(
            f"SAE d_in={d_in} does not match model {model.cfg.model_name!r} d_model="
            f"{model.cfg.d_model}"
        )
    return str(hook)


# ----------------------------------------------------------------------------------------------
# Sink-aware use


def _sink_ratio(sae: SAELike, sink_ratio: float | None) -> float:
    if sink_ratio is not None:
        if not sink_ratio > 0:
            raise ConfigError(f"sink_ratio must be positive, got {sink_ratio}")
        return float(sink_ratio)
    return float(sae.cfg.metadata.get("sink_ratio", DEFAULT_SINK_RATIO))


def sink_reference_norm(sae: SAELike) -> float | None:
    """The reference residual norm recorded in the SAE's metadata (None if not recorded).

    sae-ts's own SAEs record the median non-sink norm of held-out text at their hook; the one sink
    rule (:func:`sae_ts._util.sink_mask`) compares norms against ``sink_ratio`` × this value.
    """
    meta = getattr(sae.cfg, "metadata", None)
    ref = meta.get("sink_reference_norm") if meta is not None else None
    return float(ref) if ref else None


def sink_positions(
    sae: SAELike, acts: torch.Tensor, sink_ratio: float | None = None
) -> torch.Tensor:
    """Boolean mask over ``acts.shape[:-1]``: True at attention-sink positions.

    The one sink rule (:func:`sae_ts._util.sink_mask`) with the SAE's reference norm: a position
    is a sink if its norm exceeds ``sink_ratio`` × the reference median norm in the SAE's metadata
    (``sink_reference_norm``; the batch median if absent), or, for ``[batch, pos, d]`` input, if it
    is position 0. ``sink_ratio=None`` uses the ratio recorded in the metadata.
    """
    if acts.ndim < 2:
        raise ConfigError(f"expected activations [..., d], got shape {tuple(acts.shape)}")
    if acts.shape[-1] != sae.cfg.d_in:
        raise ConfigError(
            f"d_in mismatch: activations have d={acts.shape[-1]}, SAE d_in={sae.cfg.d_in}"
        )
    return sink_mask(acts, _sink_ratio(sae, sink_ratio), sink_reference_norm(sae))


def encode(sae: SAELike, acts: torch.Tensor, sink_ratio: float | None = None) -> torch.Tensor:
    """Feature activations ``[..., d_sae]`` of ``acts`` ``[..., d_in]``, zero at sink positions."""
    mask = sink_positions(sae, acts, sink_ratio)
    feats = sae.encode(acts.to(sae.W_enc.dtype))
    return feats.masked_fill(mask.unsqueeze(-1), 0.0)


def reconstruct_with_passthrough(
    sae: SAELike, acts: torch.Tensor, sink_ratio: float | None = None
) -> torch.Tensor:
    """SAE reconstruction of ``acts``, with the original activation kept at sink positions."""
    mask = sink_positions(sae, acts, sink_ratio)
    recon = sae.decode(sae.encode(acts.to(sae.W_enc.dtype))).to(acts.dtype)
    return torch.where(mask.unsqueeze(-1), acts, recon)


def splice_hook(
    sae: SAELike, sink_ratio: float | None = None
) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """A TransformerLens hook that replaces the activation by its reconstruction (sinks kept)."""

    def hook(acts: torch.Tensor, hook: Any) -> torch.Tensor:
        return reconstruct_with_passthrough(sae, acts, sink_ratio)

    return hook


# ----------------------------------------------------------------------------------------------
# Evaluation


def make_windows(
    tokenizer: Any, texts: Sequence[str], context_size: int, bos_id: int, separator: str = "\n\n"
) -> torch.Tensor:
    """Tokenise ``texts``, join them with ``separator`` and cut into ``[n, context_size]`` windows.

    Every window starts with ``bos_id``; the last, incomplete window is dropped (a single window
    is padded by repetition-free truncation only when the text is long enough, else empty).
    """
    if context_size < 2:
        raise ConfigError(f"context_size must be >= 2, got {context_size}")
    sep = tokenizer(separator, add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        stream.extend(sep)
    body = context_size - 1
    n = len(stream) // body
    if n == 0:
        return torch.empty((0, context_size), dtype=torch.int64)
    toks = torch.tensor(stream[: n * body], dtype=torch.int64).view(n, body)
    return torch.cat([torch.full((n, 1), bos_id, dtype=torch.int64), toks], dim=1)


@dataclass
class SAEEvalResult:
    """Quality figures of an SAE on some text (sink positions excluded everywhere)."""

    n_tokens: int
    n_sinks: int
    explained_variance: float
    mse: float
    l0: float
    dead_fraction: float
    n_dead: int
    d_sae: int
    ce_clean: float | None = None
    ce_sae: float | None = None
    ce_mean_ablated: float | None = None
    ce_recovered: float | None = None
    ce_recovered_ci: tuple[float, float] | None = None
    mean_activation: list[float] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The figures as a plain dict (without the mean activation vector)."""
        d = asdict(self)
        d.pop("mean_activation")
        return d


def reconstruction_stats(sae: SAELike, batches: Iterable[torch.Tensor]) -> SAEEvalResult:
    """Explained variance, MSE, L0 and dead fraction over batches of non-sink activations ``[n, d]``.

    For activations already cached with sinks removed (e.g. by ``sae-ts train-sae``); CE fields
    are left empty.
    """
    d_sae = sae.cfg.d_sae
    fired = torch.zeros(d_sae, dtype=torch.bool)
    sq_err = 0.0
    n_tok = 0
    l0_sum = 0.0
    act_sum = torch.zeros(sae.cfg.d_in, dtype=torch.float64)
    act_sq = 0.0
    with torch.inference_mode():
        for x in batches:
            if x.ndim != 2 or x.shape[1] != sae.cfg.d_in:
                raise ConfigError(f"expected activations [n, {sae.cfg.d_in}], got {tuple(x.shape)}")
            x = x.float()
            feats = sae.encode(x.to(sae.W_enc.dtype))
            recon = sae.decode(feats).float()
            sq_err += float((recon - x).pow(2).sum())
            act_sum += x.double().sum(0).cpu()
            act_sq += float(x.double().pow(2).sum())
            fired |= (feats > 0).any(0).cpu()
            l0_sum += float((feats > 0).sum())
            n_tok += x.shape[0]
    if n_tok == 0:
        raise ConfigError("no (non-sink) activations to evaluate")
    mean = act_sum / n_tok
    total_var = act_sq - n_tok * float(mean.pow(2).sum())
    return SAEEvalResult(
        n_tokens=n_tok,
        n_sinks=0,
        explained_variance=1.0 - sq_err / total_var,
        mse=sq_err / (n_tok * sae.cfg.d_in),
        l0=l0_sum / n_tok,
        dead_fraction=float((~fired).float().mean()),
        n_dead=int((~fired).sum()),
        d_sae=d_sae,
        mean_activation=mean.tolist(),
    )


def _ce_per_token(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)


def evaluate_sae(
    model: Any,
    sae: SAELike,
    texts: Sequence[str] | None = None,
    *,
    windows: torch.Tensor | None = None,
    context_size: int = 128,
    max_tokens: int = 50_000,
    batch_size: int = 8,
    sink_ratio: float | None = None,
    compute_ce: bool = True,
    ce_max_tokens: int | None = None,
    progress: bool = False,
) -> SAEEvalResult:
    """Explained variance, CE-loss recovered, L0 and dead fraction of ``sae`` on ``texts``.

    Texts are packed into windows of ``context_size`` tokens that start with the document-start
    token (or pass ``windows`` directly). Sink positions are excluded from every figure, and kept
    unchanged when the reconstruction is spliced in. Explained variance is ``1 - Σ‖x - x̂‖² /
    Σ‖x - x̄‖²`` over all non-sink tokens. CE-loss recovered is ``(CE_ablate - CE_sae) / (CE_ablate
    - CE_clean)`` where ablation replaces non-sink activations by their mean over the evaluated
    tokens. A latent is dead if it never fires on the evaluated tokens. CE is computed on the
    first ``ce_max_tokens`` tokens (all if None); ``ce_recovered_ci`` is its 95% bootstrap
    interval over windows (2,000 resamples, seed 0).
    """
    from tqdm.auto import tqdm

    hook = check_pair(model, sae)
    layer = hook_layer(hook)
    if windows is None:
        if not texts:
            raise ConfigError("no texts to evaluate on")
        bos = model.tokenizer.bos_token_id
        windows = make_windows(model.tokenizer, list(texts), context_size, int(bos))
        if windows.shape[0] == 0:
            raise ConfigError(f"the texts hold fewer than {context_size} tokens")
    if windows.ndim != 2:
        raise ConfigError(f"windows must be [n, context], got {tuple(windows.shape)}")
    n_win = max(1, min(windows.shape[0], math.ceil(max_tokens / windows.shape[1])))
    windows = windows[:n_win]
    device = next(model.parameters()).device
    n_sink = 0

    def non_sink_acts() -> Iterator[torch.Tensor]:
        # Pass 1: reconstruction statistics (the forward pass stops at the SAE layer).
        nonlocal n_sink
        for b in tqdm(
            range(0, n_win, batch_size), desc="SAE eval: reconstruction", disable=not progress
        ):
            toks = windows[b : b + batch_size].to(device)
            _, cache = run_with_cache(model, toks, names_filter=hook, stop_at_layer=layer + 1)
            acts = cache[hook].float()
            mask = sink_positions(sae, acts, sink_ratio)
            n_sink += int(mask.sum())
            yield acts[~mask]

    with torch.inference_mode():
        result = reconstruction_stats(sae, non_sink_acts())
    result.n_sinks = n_sink
    mean = torch.tensor(result.mean_activation, dtype=torch.float64)
    if not compute_ce:
        return result
    # Pass 2: CE loss clean / spliced / mean-ablated (full forward passes).
    mean_act = mean.to(device=device, dtype=torch.float32)

    def ablate(acts: torch.Tensor, hook: Any) -> torch.Tensor:
        mask = sink_positions(sae, acts, sink_ratio)
        return torch.where(mask.unsqueeze(-1), acts, mean_act.to(acts.dtype).expand_as(acts))

    ce_n = n_win if ce_max_tokens is None else max(1, min(n_win, ce_max_tokens // windows.shape[1]))
    per_window: dict[str, list[torch.Tensor]] = {"clean": [], "sae": [], "ablated": []}
    with torch.inference_mode():
        for b in tqdm(range(0, ce_n, batch_size), desc="SAE eval: CE loss", disable=not progress):
            toks = windows[b : min(b + batch_size, ce_n)].to(device)
            for name, hooks in (
                ("clean", []),
                ("sae", [(hook, splice_hook(sae, sink_ratio))]),
                ("ablated", [(hook, ablate)]),
            ):
                logits = run_with_hooks(model, toks, fwd_hooks=hooks, return_type="logits")
                per_window[name].append(_ce_per_token(logits, toks).double().sum(1).cpu())
    sums = {k: torch.cat(v) for k, v in per_window.items()}  # [windows] summed CE per window
    count = sums["clean"].numel() * (windows.shape[1] - 1)
    ce = {k: float(v.sum()) / count for k, v in sums.items()}
    result.ce_clean, result.ce_sae, result.ce_mean_ablated = ce["clean"], ce["sae"], ce["ablated"]
    result.ce_recovered = float(_recovered(sums["clean"], sums["sae"], sums["ablated"]))
    result.ce_recovered_ci = _recovered_ci(sums["clean"], sums["sae"], sums["ablated"])
    return result


def _recovered_ci(
    clean: torch.Tensor, sae: torch.Tensor, ablated: torch.Tensor, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float] | None:
    """95% percentile bootstrap interval of CE-loss recovered, resampling windows (the sampling
    unit: tokens within a window are not independent); None where a resample is undefined."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, clean.numel(), (n_boot, clean.numel()), generator=g)
    boot = _recovered(clean[idx], sae[idx], ablated[idx])
    if not bool(torch.isfinite(boot).all()):
        return None
    lo, hi = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=boot.dtype)).tolist()
    return (lo, hi)


def _recovered(clean: torch.Tensor, sae: torch.Tensor, ablated: torch.Tensor) -> torch.Tensor:
    """``(CE_ablate - CE_sae) / (CE_ablate - CE_clean)`` from summed CE over windows (last dim);
    NaN where ablation does not hurt."""
    c, s, a = clean.sum(-1), sae.sum(-1), ablated.sum(-1)
    denom = a - c
    return torch.where(
        denom > 0, (a - s) / denom.clamp_min(1e-30), torch.full_like(denom, torch.nan)
    )

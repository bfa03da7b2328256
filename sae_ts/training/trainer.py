"""Training the embedded SAE with sae-lens's trainer, as a Python function.

:func:`run_training` is the whole pipeline behind ``sae-ts train-sae``: corpus, activation caches,
training (resumable from checkpoints), export and evaluation. Its steps are also callable alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file

from .._util import cache_dir, sha256_file
from ..artifacts import versions, write_json_atomic
from ..errors import ConfigError
from ..models import (
    DEFAULT_MODEL,
    EMBEDDED_MODELS,
    document_start_id,
    embedded_spec,
    load_default_model,
)
from ..sae import default_sae_dir, evaluate_sae, load_sae, make_windows, reconstruction_stats
from ..types import SAELike
from .activations import (
    ActivationCache,
    CachedActivationBatches,
    cache_activations,
    check_cache_meta,
)
from .corpus import CORPUS_SOURCES, build_corpus

__all__ = [
    "TrainConfig",
    "TrainingResult",
    "build_caches",
    "evaluate_trained",
    "export_sae",
    "run_training",
    "train_sae",
]

log = logging.getLogger("sae_ts")


@dataclass
class TrainConfig:
    """Everything that determines the trained SAE (all random choices derive from ``seed``).

    ``model`` is an embedded model's key. The defaults rebuild SmolLM2's shipped TopK SAE;
    :meth:`for_model` gives the settings of each embedded model's shipped SAE (Gemma 3 270M: a
    JumpReLU SAE with the quadratic L0 penalty of Gemma Scope 2 around ``target_l0``).
    """

    seed: int = 0
    model: str = "smollm2-135m"
    layer: int = 12
    context_size: int = 128
    heldout_fraction: float = 0.05
    sink_ratio: float = 7.0
    max_train_tokens: int = 458_752  # 7 chunks of 512 windows × 128 tokens
    heldout_tokens: int = 150_000
    ood_tokens: int = 65_536
    architecture: Literal["topk", "batchtopk", "jumprelu"] = "topk"
    d_sae: int = 4096
    k: int = 64
    aux_loss_coefficient: float = 1.0
    target_l0: float = 45.0
    l0_coefficient: float = 1.0
    l0_warm_up_steps: int = 0
    jumprelu_bandwidth: float = 0.05
    jumprelu_init_threshold: float = 0.01
    pre_act_loss_coefficient: float = 0.0
    lr: float = 8e-4
    batch_size: int = 1024
    epochs: float = 4.0
    warmup_steps: int = 100
    decay_fraction: float = 0.2
    dead_feature_window: int = 100
    feature_sampling_window: int = 500
    n_checkpoints: int = 10
    extract_batch_size: int = 16
    chunk_windows: int = 512
    threads: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ("topk", "batchtopk", "jumprelu"):
            raise ConfigError(
                f"architecture must be topk, batchtopk or jumprelu, got {self.architecture!r}"
            )
        if self.model not in EMBEDDED_MODELS:
            raise ConfigError(f"model must be one of {sorted(EMBEDDED_MODELS)}, got {self.model!r}")
        if self.architecture == "jumprelu" and not 0 < self.target_l0 <= self.d_sae:
            raise ConfigError(f"target_l0 must be in (0, d_sae], got {self.target_l0}")
        if self.k <= 0 or self.k > self.d_sae:
            raise ConfigError(f"k must be in [1, d_sae], got k={self.k}, d_sae={self.d_sae}")
        if self.epochs <= 0 or self.batch_size <= 0 or self.lr <= 0:
            raise ConfigError("epochs, batch_size and lr must be positive")
        if not 0 <= self.decay_fraction < 1:
            raise ConfigError(f"decay_fraction must be in [0, 1), got {self.decay_fraction}")

    @classmethod
    def for_model(cls, model: str, **overrides: Any) -> TrainConfig:
        """The settings of the SAE sae-ts ships for embedded model ``model``, with overrides."""
        preset = dict(_PRESETS.get(model, {}))
        preset.update(overrides)
        return cls(model=model, **preset)

    @property
    def hook_name(self) -> str:
        """The hook the SAE reads."""
        return f"blocks.{self.layer}.hook_resid_post"

    def run_tag(self) -> str:
        """A short hash of the settings that shape training (names the checkpoint folder)."""
        d = asdict(self)
        for key in ("threads", "extract_batch_size", "chunk_windows", "n_checkpoints"):
            d.pop(key)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


_PRESETS: dict[str, dict[str, Any]] = {
    "smollm2-135m": {},
    # Gemma 3 270M: sinks at layer 12 reach 5.5-7x the median norm (normal tokens <= 1.6x), so the
    # sink ratio is 4; L0 in Gemma Scope 2's "medium" band (30-60).
    "gemma-3-270m": {
        "architecture": "jumprelu",
        "sink_ratio": 4.0,
        "d_sae": 8192,
        "target_l0": 45.0,
        "max_train_tokens": 1_048_576,
        # thresholds start at 0.1 (in units where E||x|| = sqrt(d_in)): from 0.3, short pilots
        # left 75% of latents dead; from 0.01, L0 barely moved in 250 steps
        "jumprelu_init_threshold": 0.1,
        "lr": 7e-4,
        "epochs": 4.0,
        "pre_act_loss_coefficient": 3e-6,
    },
}


def _latest_checkpoint(ckpt_root: Path) -> Path | None:
    from sae_lens.constants import TRAINER_STATE_FILENAME

    best: tuple[int, Path] | None = None
    if ckpt_root.is_dir():
        for d in ckpt_root.iterdir():
            if d.is_dir() and d.name.isdigit() and (d / TRAINER_STATE_FILENAME).exists():
                if best is None or int(d.name) > best[0]:
                    best = (int(d.name), d)
    return best[1] if best else None


def _make_training_sae(cfg: TrainConfig, d_in: int, metadata: dict[str, Any]) -> Any:
    from sae_lens import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(cfg.seed)
    if cfg.architecture == "jumprelu":
        return JumpReLUTrainingSAE(
            JumpReLUTrainingSAEConfig(
                d_in=d_in,
                d_sae=cfg.d_sae,
                normalize_activations="expected_average_only_in",
                metadata=SAEMetadata(**metadata),
                jumprelu_sparsity_loss_mode="quadratic",
                target_l0=cfg.target_l0,
                l0_coefficient=cfg.l0_coefficient,
                l0_warm_up_steps=cfg.l0_warm_up_steps,
                jumprelu_bandwidth=cfg.jumprelu_bandwidth,
                jumprelu_init_threshold=cfg.jumprelu_init_threshold,
                pre_act_loss_coefficient=cfg.pre_act_loss_coefficient or None,
            )
        )
    common: dict[str, Any] = {
        "d_in": d_in,
        "d_sae": cfg.d_sae,
        "k": cfg.k,
        "aux_loss_coefficient": cfg.aux_loss_coefficient,
        "rescale_acts_by_decoder_norm": True,
        "normalize_activations": "expected_average_only_in",
        "metadata": SAEMetadata(**metadata),
    }
    if cfg.architecture == "batchtopk":
        return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common))
    return TopKTrainingSAE(TopKTrainingSAEConfig(**common))


def train_sae(
    cfg: TrainConfig,
    train_cache: ActivationCache,
    ckpt_root: Path,
    metadata: dict[str, Any],
    progress: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """Train an SAE with sae-lens's :class:`~sae_lens.SAETrainer` on a cached split.

    Resumes from the newest checkpoint in ``ckpt_root`` (weights, optimiser, schedulers and data
    position). Returns the trained SAE (activation scaling folded in) and training statistics.
    """
    from sae_lens import SAETrainer
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.activation_scaler import ActivationScaler

    torch.set_num_threads(cfg.threads)
    data = train_cache.load_all()
    acts = data["acts"]
    if cfg.max_train_tokens < acts.shape[0]:
        acts = acts[: cfg.max_train_tokens]
    n = acts.shape[0]
    steps_per_epoch = n // cfg.batch_size
    total_steps = max(1, round(cfg.epochs * steps_per_epoch))
    sae = _make_training_sae(cfg, acts.shape[1], metadata)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=total_steps * cfg.batch_size,
        train_batch_size_samples=cfg.batch_size,
        lr=cfg.lr,
        lr_end=cfg.lr / 10,
        lr_scheduler_name="constant",
        lr_warm_up_steps=min(cfg.warmup_steps, total_steps // 10),
        lr_decay_steps=int(cfg.decay_fraction * total_steps),
        device="cpu",
        dead_feature_window=cfg.dead_feature_window,
        feature_sampling_window=cfg.feature_sampling_window,
        n_checkpoints=cfg.n_checkpoints,
        checkpoint_path=str(ckpt_root),
        save_final_checkpoint=False,
    )
    provider = CachedActivationBatches(acts, cfg.batch_size, cfg.seed)
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=provider)
    latest = _latest_checkpoint(ckpt_root)
    if latest is not None:
        trainer.load_trainer_state(latest)
        sae.load_weights_from_checkpoint(latest)
        provider.step = trainer.n_training_samples // cfg.batch_size
        trainer.checkpoint_thresholds = [
            t for t in trainer.checkpoint_thresholds if t >= trainer.n_training_samples
        ]
        log.info("resuming from %s (step %d/%d)", latest, provider.step, total_steps)
    else:
        # The scale factor is estimated on a separate seeded sample, so that the training batch
        # sequence is the same whether or not a run was resumed.
        sample = CachedActivationBatches(acts, cfg.batch_size, cfg.seed + 7919)
        scaler = ActivationScaler()
        scaler.estimate_scaling_factor(acts.shape[1], sample, 20)
        trainer.activation_scaler = scaler
        # The residual stream has a large mean component (|mean| ~ its spread); starting the
        # decoder bias at the (scaled) mean saves the first ~1000 Adam steps of learning it.
        with torch.no_grad():
            mean = torch.stack([next(sample).mean(0) for _ in range(20)]).mean(0)
            sae.b_dec.copy_(mean * float(scaler.scaling_factor or 1.0))
    t0 = time.time()
    trained = trainer.fit()
    stats = {
        "train_tokens": n,
        "steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "epochs": cfg.epochs,
        "train_samples_seen": trainer.n_training_samples,
        "train_wall_s_this_run": round(time.time() - t0, 1),
        "final_window_l0": trained.cfg.metadata.l0,
        "final_window_dead": trained.cfg.metadata.num_dead_features,
    }
    return trained, stats


def export_sae(trained: Any, out_dir: Path, metadata: dict[str, Any]) -> Path:
    """Save a trained sae-lens SAE as an inference SAE directory, weights in fp16.

    The decoder norms are folded into the encoder (unit-norm decoder rows); ``metadata`` is merged
    into ``cfg.metadata``. The directory is written beside ``out_dir`` and renamed into place.
    """
    from sae_lens.saes.sae import SAEMetadata

    if getattr(trained.cfg, "rescale_acts_by_decoder_norm", False):
        trained.fold_W_dec_norm()
        trained.cfg.rescale_acts_by_decoder_norm = False
    elif trained.cfg.architecture() == "jumprelu":
        trained.fold_W_dec_norm()  # unit-norm decoder rows; thresholds scaled with the encoder
    md = trained.cfg.metadata.to_dict()
    md.update(metadata)
    trained.cfg.metadata = SAEMetadata(**md)
    trained.cfg.dtype = "float32"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        weights, _ = trained.save_inference_model(tmp)
        state = load_file(str(weights))
        save_file({k: v.to(torch.float16).contiguous() for k, v in state.items()}, str(weights))
        (tmp / "sparsity.safetensors").unlink(missing_ok=True)
        # the weights' checksum in the metadata: sae_ts.sae.load_sae refuses a damaged file
        cfg_path = tmp / "cfg.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["metadata"]["weights_sha256"] = sha256_file(weights)
        cfg_path.write_text(json.dumps(cfg))
        tmp.chmod(0o755)  # mkdtemp makes it private; the asset ships with the package
        for f in tmp.iterdir():
            f.chmod(0o644)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.replace(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# ----------------------------------------------------------------------------------------------
# The whole pipeline


def build_caches(cfg: TrainConfig, work_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Build the corpus and the activation caches of every split (resumable); return a record."""
    torch.set_num_threads(cfg.threads)
    splits = build_corpus(seed=cfg.seed, heldout_fraction=cfg.heldout_fraction)
    model = load_default_model(model=cfg.model)
    bos = document_start_id(model)
    limits = {"train": cfg.max_train_tokens, "heldout": cfg.heldout_tokens, "ood": cfg.ood_tokens}
    record: dict[str, Any] = {}
    for split in ("heldout", "ood", "train"):
        win = make_windows(model.tokenizer, splits[split], cfg.context_size, bos)
        total_tokens = int(win.numel())
        # Every split is cached in a seeded random order of windows, so that a token budget
        # takes a sample from across all sources (and a smaller budget is a prefix of a larger).
        g = torch.Generator().manual_seed(cfg.seed + 1)
        win = win[torch.randperm(win.shape[0], generator=g)]
        win = win[: max(1, limits[split] // cfg.context_size)]
        out = work_dir / split
        check_cache_meta(
            out,
            {
                "hook_name": cfg.hook_name,
                "sink_ratio": cfg.sink_ratio,
                "model_name": model.cfg.model_name,
            },
        )
        t0 = time.time()
        cache = cache_activations(
            model, win, out, cfg.hook_name, cfg.layer, sink_ratio=cfg.sink_ratio,
            batch_size=cfg.extract_batch_size, chunk_windows=cfg.chunk_windows,
            extra_meta={"split": split, "seed": cfg.seed}, progress=progress,
        )  # fmt: skip
        n_act = sum(int(load_file(str(p))["seq"].shape[0]) for p in cache.chunk_paths())
        record[split] = {
            "documents": len(splits[split]),
            "split_tokens": total_tokens,
            "cached_windows": int(win.shape[0]),
            "cached_tokens": int(win.numel()),
            "non_sink_activations": n_act,
            "wall_s_this_run": round(time.time() - t0, 1),
        }
    return record


def _corpus_metadata(cfg: TrainConfig, record: dict[str, Any]) -> dict[str, Any]:
    return {
        "sources": [
            {
                "name": s.name,
                "package": s.package,
                "version": s.version,
                "sha256": s.sha256,
                "file": s.member,
                "licence": s.licence,
                "role": s.role,
                "description": s.description,
            }
            for s in CORPUS_SOURCES
        ],
        "splits": record,
        "heldout_fraction": cfg.heldout_fraction,
        "context_size": cfg.context_size,
        "dedup": "exact document text (sha256)",
    }


def _reference_norm(cache: ActivationCache) -> float:
    acts = cache.load_all(max_tokens=100_000)["acts"].float()
    return float(acts.norm(dim=-1).median())


def evaluate_trained(
    sae: SAELike,
    held: ActivationCache,
    ood: ActivationCache,
    ce_tokens: int | None,
    model: str = "smollm2-135m",
) -> dict[str, Any]:
    """Quality figures of a trained SAE on the cached held-out and out-of-domain splits.

    Explained variance, L0 and dead latents use every cached (non-sink) activation, with no
    forward pass; ``dead_fraction`` under ``"combined"`` counts latents that never fire on either
    split. CE-loss recovered runs the full model on the first ``ce_tokens`` tokens of each split
    (skipped if None).
    """

    def batches(cache: ActivationCache) -> Iterator[torch.Tensor]:
        for p in cache.chunk_paths():
            acts = cache.load_chunk(p)["acts"]
            yield from acts.split(8192)

    evals: dict[str, Any] = {}
    for split, cache in (("heldout", held), ("ood", ood)):
        evals[split] = reconstruction_stats(sae, batches(cache)).as_dict()
    both = reconstruction_stats(sae, (b for c in (held, ood) for b in batches(c)))
    evals["combined"] = {k: both.as_dict()[k] for k in ("n_tokens", "dead_fraction", "n_dead")}
    if ce_tokens:
        lm = load_default_model(model=model)
        for split, cache in (("heldout", held), ("ood", ood)):
            res = evaluate_sae(
                lm, sae, windows=cache.tokens().to(torch.int64), max_tokens=ce_tokens,
                ce_max_tokens=ce_tokens, progress=True,
            )  # fmt: skip
            evals[split].update(
                ce_tokens=res.n_tokens + res.n_sinks, ce_clean=res.ce_clean, ce_sae=res.ce_sae,
                ce_mean_ablated=res.ce_mean_ablated, ce_recovered=res.ce_recovered,
                ce_recovered_ci=res.ce_recovered_ci,
            )  # fmt: skip
    return evals


@dataclass
class TrainingResult:
    """What :func:`run_training` did: the caches record, and (unless extract-only) the SAE."""

    work_dir: Path
    caches: dict[str, Any]
    out: Path | None = None
    report: dict[str, Any] | None = None


def run_training(
    cfg: TrainConfig | None = None,
    *,
    work_dir: str | Path | None = None,
    out: str | Path | None = None,
    extract_only: bool = False,
    ce_tokens: int | None = 4_096,
    progress: bool = True,
) -> TrainingResult:
    """Rebuild an embedded model's SAE from scratch; resumable at every stage.

    Builds the corpus and the activation caches in ``work_dir`` (default: the cache dir's
    ``acts_l{layer}`` for SmolLM2, ``acts_{model}_l{layer}`` for the others), trains with sae-lens's
    trainer, exports the SAE to ``out`` (default: the package's asset dir for ``cfg.model``),
    evaluates it on the held-out and out-of-domain caches (CE loss on
    ``ce_tokens`` tokens per split; None skips it) and writes ``sae_ts_training.json`` beside it.
    """
    cfg = cfg or TrainConfig()
    torch.manual_seed(cfg.seed)
    spec = embedded_spec(cfg.model)
    tag = f"acts_l{cfg.layer}" if cfg.model == DEFAULT_MODEL else f"acts_{cfg.model}_l{cfg.layer}"
    work = Path(work_dir) if work_dir else cache_dir() / tag
    out_dir = Path(out) if out else default_sae_dir(cfg.model)
    t0 = time.time()
    record = build_caches(cfg, work, progress=progress)
    log.info("activation caches ready (%.0fs this run): %s", time.time() - t0, json.dumps(record))
    if extract_only:
        return TrainingResult(work, record)
    train_cache, held, ood = (ActivationCache(work / s) for s in ("train", "heldout", "ood"))
    ref_norm = _reference_norm(held)
    metadata: dict[str, Any] = {
        "model_name": spec.name,
        "hook_name": cfg.hook_name,
        "hook_head_index": None,
        "context_size": cfg.context_size,
        "prepend_bos": True,
        "sink_ratio": cfg.sink_ratio,
        "sink_reference_norm": round(ref_norm, 3),
        "sink_rule": "position 0, and positions whose residual norm exceeds sink_ratio × "
        "sink_reference_norm (the median non-sink norm of held-out text); excluded from training "
        "and passed through unchanged by sae_ts.sae",
        "trained_by": "sae-ts train-sae",
        "train_config": asdict(cfg),
        "corpus": _corpus_metadata(cfg, record),
    }
    ckpt_root = work / "checkpoints" / cfg.run_tag()
    t1 = time.time()
    trained, stats = train_sae(cfg, train_cache, ckpt_root, metadata, progress=progress)
    stats["train_wall_s_this_run"] = round(time.time() - t1, 1)
    export_sae(trained, out_dir, {**metadata, "training": stats})
    evals = evaluate_trained(load_sae(out_dir), held, ood, ce_tokens, model=cfg.model)
    report = {
        "train_config": asdict(cfg),
        "training": stats,
        "corpus": _corpus_metadata(cfg, record),
        "evaluation": evals,
        "versions": versions(),
    }
    write_json_atomic(out_dir / "sae_ts_training.json", report)
    (out_dir / "sae_ts_training.json").chmod(0o644)
    return TrainingResult(work, record, out_dir, report)

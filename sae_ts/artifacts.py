"""Artefacts: safetensors files with a JSON provenance record, written atomically.

Every artefact sae-ts writes is a pair ``NAME.safetensors`` + ``NAME.json``. The JSON record holds
what made the tensors (model, hook, SAE, scale, seed, config) and the package versions. Nothing is
ever loaded with pickle. Writes go to a temporary file that is renamed into place, so a killed job
never leaves a half-written artefact.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._util import sha256_file
from .errors import ArtifactError

__all__ = [
    "ArtifactError",
    "artifact_paths",
    "load_artifact",
    "read_checkpoint",
    "save_artifact",
    "versions",
    "write_checkpoint",
    "write_json_atomic",
]

FORMAT_VERSION = 1


def versions() -> dict[str, str]:
    """Versions of the packages whose behaviour determines sae-ts's numbers."""
    out = {"python": platform.python_version()}
    for pkg in ("sae-ts", "torch", "transformer-lens", "sae-lens", "transformers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def artifact_paths(path: str | Path) -> tuple[Path, Path]:
    """The (safetensors, JSON record) paths of the artefact at ``path`` (stem or either file)."""
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    # not with_suffix: a stem such as "effects_x0.2" has a dot that is not a suffix
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_checkpoint(path: Path, key: str, payload: Any) -> None:
    """Save a finished unit of a long job as ``{"key": key, "payload": payload}``, atomically.

    ``key`` is a digest of everything that decides ``payload``; :func:`read_checkpoint` reuses the
    payload only under the same key.
    """
    write_json_atomic(path, {"key": key, "payload": payload})


def read_checkpoint(path: Path, key: str, what: str = "checkpoint") -> Any | None:
    """The payload saved by :func:`write_checkpoint`, or ``None`` if absent or of another key.

    A checkpoint of other settings is ignored (the job overwrites it when the unit finishes); an
    unreadable one raises :class:`ArtifactError` naming the file, rather than being silently
    recomputed over. ``what`` names the unit in that error (``"task checkpoint"``).
    """
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
        found = doc["key"]
        # checkpoints written before write_checkpoint existed named the payload per job
        field = next((f for f in ("record", "records") if f in doc), "payload")
        payload = doc[field]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ArtifactError(f"corrupt {what} {path}: {e}; delete it to recompute it") from e
    return payload if found == key else None


def save_artifact(
    path: str | Path, tensors: dict[str, torch.Tensor], record: dict[str, Any]
) -> Path:
    """Save ``tensors`` as safetensors and ``record`` (plus versions) as JSON; return the stem."""
    st_path, json_path = artifact_paths(path)
    st_path.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    full = {"format_version": FORMAT_VERSION, "versions": versions(), **record}
    fd, tmp = tempfile.mkstemp(dir=st_path.parent, prefix=f".{st_path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(clean, tmp, metadata={"sae_ts_kind": str(record.get("kind", ""))})
        os.replace(tmp, st_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    full["sha256"] = sha256_file(st_path)  # load_artifact refuses a file that no longer matches
    write_json_atomic(json_path, full)
    return st_path.with_name(st_path.name[: -len(".safetensors")])


def load_artifact(
    path: str | Path,
    kind: str | None = None,
    device: str | torch.device = "cpu",
    tensors: Sequence[str] = (),
    fields: Sequence[str] = (),
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load an artefact written by :func:`save_artifact`; check its checksum (when its record has
    one), its kind, that it holds the named ``tensors`` and record ``fields``, and that it is
    finite. Any damage raises :class:`ArtifactError`."""
    st_path, json_path = artifact_paths(path)
    if not st_path.exists():
        raise ArtifactError(f"no artefact at {st_path}")
    if not json_path.exists():
        raise ArtifactError(f"{st_path} has no provenance record {json_path.name} beside it")
    try:
        record = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"corrupt provenance record {json_path}: {e}") from e
    if not isinstance(record, dict):
        raise ArtifactError(f"corrupt provenance record {json_path}: not a JSON object")
    digest = record.get("sha256")
    if digest is not None and sha256_file(st_path) != digest:
        raise ArtifactError(
            f"{st_path} does not match the sha256 in {json_path.name}: the file is damaged or was "
            "replaced; restore or recompute it"
        )
    try:
        loaded = load_file(str(st_path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"corrupt safetensors file {st_path}: {e}") from e
    if kind is not None and record.get("kind") != kind:
        raise ArtifactError(f"{st_path} holds a {record.get('kind')!r}, expected a {kind!r}")
    missing = [t for t in tensors if t not in loaded]
    if missing:
        raise ArtifactError(f"{st_path} lacks the tensors {missing}")
    missing = [f for f in fields if f not in record]
    if missing:
        raise ArtifactError(f"{json_path} lacks the fields {missing}")
    for name, t in loaded.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ArtifactError(f"{st_path}: tensor {name!r} contains NaN or inf")
    return loaded, record

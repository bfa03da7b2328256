"""Shared fixtures: a tiny random Llama model (fast) and the embedded real model (session-wide)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_grad_enabled(True)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def tiny():
    """A randomly initialised 2-layer Llama model (width 64) with the shipped tiny tokenizer."""
    from sae_ts.testing import tiny_model

    return tiny_model(seed=0)


@pytest.fixture(scope="session")
def real_model():
    """The embedded SmolLM2-135M-Instruct as a HookedTransformer."""
    from sae_ts.models import load_default_model

    return load_default_model()


@pytest.fixture(scope="session")
def hf_model():
    """The same weights as a Hugging Face model, for parity tests."""
    from sae_ts.models import load_hf_model

    return load_hf_model()

"""Shared fixtures: a tiny random Llama model (fast) and the embedded real model (session-wide)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_grad_enabled(True)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (a script, not a package) to test its helpers."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def space_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hand-written "space" concept task, written in the SAE-TS layout (``saets_space/``)."""
    from tests.handwritten import write_space_task

    return write_space_task(tmp_path_factory.mktemp("fixtures"))


@pytest.fixture(scope="session")
def kindness_persona(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hand-written "kindness" persona set, written as model-written-evals JSONL."""
    from tests.handwritten import write_kindness_persona

    return write_kindness_persona(tmp_path_factory.mktemp("fixtures"))


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


@pytest.fixture(scope="session")
def gemma_model():
    """The embedded Gemma 3 270M (base) as a HookedTransformer (TL's own Gemma-3 conversion)."""
    from sae_ts.models import load_default_model

    return load_default_model(model="gemma-3-270m")


# Property-based tests: a fixed, derandomised profile in `make test` (a failure prints the
# example and replays the same way on the next run); HYPOTHESIS_PROFILE=deep for a longer search.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, max_examples=60, deadline=None, print_blob=True)
settings.register_profile("deep", max_examples=2000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

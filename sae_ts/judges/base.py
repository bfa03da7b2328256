"""The one interface every judge implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Judge"]


@runtime_checkable
class Judge(Protocol):
    """Anything that scores texts in [0, 1] (``prompt``: the prompt the texts continue)."""

    def score(self, texts: Sequence[str], prompt: str = "") -> np.ndarray: ...

"""Deprecated: moved to :mod:`sae_ts.experiments.comparison`; this alias will be removed."""

from __future__ import annotations

import warnings

from .experiments.comparison import *  # noqa: F403
from .experiments.comparison import __all__ as __all__

warnings.warn(
    "sae_ts.comparison moved to sae_ts.experiments.comparison", DeprecationWarning, stacklevel=2
)

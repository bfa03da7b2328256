"""Deprecated: moved to :mod:`sae_ts.experiments.reliability`; this alias will be removed."""

from __future__ import annotations

import warnings

from .experiments.reliability import *  # noqa: F403
from .experiments.reliability import __all__ as __all__

warnings.warn(
    "sae_ts.reliability moved to sae_ts.experiments.reliability", DeprecationWarning, stacklevel=2
)

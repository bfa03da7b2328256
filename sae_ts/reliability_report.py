"""Deprecated: moved to :mod:`sae_ts.experiments.reliability_report`; this alias will be removed."""

from __future__ import annotations

import warnings

from .experiments.reliability_report import *  # noqa: F403
from .experiments.reliability_report import __all__ as __all__

warnings.warn(
    "sae_ts.reliability_report moved to sae_ts.experiments.reliability_report",
    DeprecationWarning,
    stacklevel=2,
)

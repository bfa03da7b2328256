"""Deprecated: moved to :mod:`sae_ts.experiments.reliability` (items, splits, statistics) and
:mod:`sae_ts.experiments.reliability_steering` (curves, vectors); this alias will be removed."""

from __future__ import annotations

import warnings

from .experiments import reliability as _data
from .experiments import reliability_steering as _steering
from .experiments.reliability import *  # noqa: F403
from .experiments.reliability_steering import *  # noqa: F403

__all__ = [*_data.__all__, *_steering.__all__]

warnings.warn(
    "sae_ts.reliability moved to sae_ts.experiments.reliability", DeprecationWarning, stacklevel=2
)

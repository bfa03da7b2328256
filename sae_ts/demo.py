"""Deprecated: moved to :mod:`sae_ts.experiments.demo`; this alias will be removed."""

from __future__ import annotations

import warnings

from .experiments.demo import *  # noqa: F403
from .experiments.demo import __all__ as __all__

warnings.warn("sae_ts.demo moved to sae_ts.experiments.demo", DeprecationWarning, stacklevel=2)

"""Deprecated: moved to :mod:`sae_ts.training`; this alias will be removed."""

from __future__ import annotations

import warnings

from .training import *  # noqa: F403
from .training import __all__ as __all__

warnings.warn("sae_ts.sae_training moved to sae_ts.training", DeprecationWarning, stacklevel=2)

"""The shared Protocols: what sae-ts needs of an SAE and of a judge."""

from __future__ import annotations

import numpy as np

from sae_ts.judges import Judge
from sae_ts.testing import tiny_sae
from sae_ts.types import SAELike


def test_sae_lens_saes_are_sae_like():
    assert isinstance(tiny_sae(8, d_sae=4), SAELike)
    assert isinstance(tiny_sae(8, d_sae=4, architecture="topk", k=2), SAELike)
    assert not isinstance(object(), SAELike)


def test_judge_protocol():
    class Constant:
        def score(self, texts, prompt=""):
            return np.full(len(texts), 0.5)

    assert isinstance(Constant(), Judge)

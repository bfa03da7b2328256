"""The corpus: splits and evaluation texts (no download in these tests)."""

from __future__ import annotations

import pytest

from sae_ts.errors import MissingFileError
from sae_ts.training import build_corpus, eval_texts


def test_eval_texts_from_a_file(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("first doc\n\nsecond doc\n\n\n\nthird doc")
    assert eval_texts(str(p)) == ["first doc", "second doc", "third doc"]
    assert eval_texts(str(p), 2) == ["first doc", "second doc"]
    with pytest.raises(MissingFileError):
        eval_texts(str(tmp_path / "none.txt"))


def test_heldout_fraction_is_checked():
    with pytest.raises(ValueError, match="heldout_fraction"):
        build_corpus(heldout_fraction=1.5)

"""Property-based tests of the feature-spec parsers (hypothesis, profile in conftest.py).

Valid specs round-trip; anything else raises a ConfigError that names the flag; nothing with two
readings (a repeated id, an empty weight) is accepted.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sae_ts.cli.common import parse_features
from sae_ts.errors import ConfigError
from sae_ts.experiments.compare.run import parse_feature_overrides
from sae_ts.solver import Target, parse_feature_spec, parse_id_list

F32_MAX = float(np.finfo(np.float32).max)
ids = st.integers(min_value=0, max_value=10**7)
weights = st.floats(min_value=1e-30, max_value=F32_MAX, allow_nan=False, allow_infinity=False)
space = st.sampled_from(["", " ", "  ", "\t"])


@st.composite
def specs(draw):
    """A valid spec and the dict it means, with random spacing and weight spellings."""
    feats = draw(st.dictionaries(ids, st.one_of(st.none(), weights), min_size=1, max_size=8))
    parts = []
    for i, w in feats.items():
        s1, s2, s3 = draw(space), draw(space), draw(space)
        parts.append(f"{s1}{i}{s2}" if w is None else f"{s1}{i}{s2}:{s3}{w!r}{draw(space)}")
    want = {i: 1.0 if w is None else w for i, w in feats.items()}
    return ",".join(parts), want


@given(specs())
def test_valid_specs_round_trip(case):
    spec, want = case
    assert parse_feature_spec(spec) == want
    canonical = ",".join(f"{i}:{w!r}" for i, w in want.items())
    assert parse_feature_spec(canonical) == want


@given(st.text(max_size=40))
def test_any_text_parses_or_raises_a_clear_error(text):
    try:
        got = parse_feature_spec(text)
    except ConfigError as e:
        assert "--features" in str(e)
        return
    # what is accepted has one reading: the canonical spelling of it parses to the same thing
    assert all(isinstance(i, int) and 0 < w <= F32_MAX for i, w in got.items())
    canonical = ",".join(f"{i}:{w!r}" for i, w in got.items())
    assert parse_feature_spec(canonical) == got


@given(st.lists(ids, min_size=1, max_size=6), st.data())
def test_a_repeated_id_is_refused_whatever_its_weights(id_list, data):
    i = data.draw(st.sampled_from(id_list))
    entries = [str(x) for x in id_list] + [f"{i}:{data.draw(weights)!r}"]
    with pytest.raises(ConfigError, match="given twice"):
        parse_feature_spec(",".join(entries))


@pytest.mark.parametrize(
    "spec, match",
    [
        ("4095:1e308", "finite number"),  # beyond float32: was a RuntimeError traceback
        ("1:1,1:2", "given twice"),  # one id, two weights: one used to win silently
        ("1,1", "given twice"),
        ("1:", "empty weight"),
        ("１:1", "ASCII digits"),  # a full-width digit
        ("1:nan", "finite number"),
        ("1:-2", "finite number"),
        ("1:0", "finite number"),
        ("1,,2", "empty entry"),
        ("1:x", "not a number"),
        ("-1", "not a feature id"),
    ],
)
def test_the_reported_cases_get_clear_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_features(spec)


def test_spaces_around_ids_and_weights_are_accepted():
    assert parse_features("1: 1") == parse_features(" 1 :1 ") == {1: 1.0}
    assert parse_features(None) == parse_features("") == parse_features("  ") == {}


@given(st.lists(ids, min_size=1, max_size=8, unique=True), space)
def test_id_lists_round_trip_and_refuse_weights_and_repeats(id_list, sp):
    assert parse_id_list(f",{sp}".join(map(str, id_list))) == id_list
    with pytest.raises(ConfigError, match="--hold"):
        parse_id_list(",".join(map(str, [*id_list, id_list[0]])))
    with pytest.raises(ConfigError, match="take no weight"):
        parse_id_list(f"{id_list[0]}:1")


@given(st.text(max_size=30))
def test_task_overrides_parse_or_raise_a_clear_error(text):
    try:
        got = parse_feature_overrides([text])
    except ConfigError as e:
        assert "--features" in str(e)
        return
    ((_, feats),) = got.items()
    assert feats and all(w > 0 for w in feats.values())


@given(st.dictionaries(ids, weights, min_size=1, max_size=5), st.integers(1, 10**7))
def test_targets_refuse_ids_beyond_the_sae(feats, d_sae):
    target = Target(feats)
    if max(feats) < d_sae:
        target.validate(d_sae)
    else:
        with pytest.raises(ConfigError, match="out of range"):
            target.validate(d_sae)

from __future__ import annotations

import numpy as np
import pytest

from sae_ts.judges import CoherenceJudge, EmbeddingBehaviorJudge, auroc, distinct_n

# A hand-written concept task (beaches vs offices), in the SAE-TS task format's fields.
POS = [
    "We spent the afternoon on the sandy beach watching the waves.",
    "The beach was crowded with surfers and sunbathers.",
    "I love the smell of sea salt and sunscreen at the beach.",
    "Children built sandcastles near the shoreline.",
    "We walked barefoot along the beach at sunset.",
    "The lifeguard watched the swimmers from his tower on the beach.",
]
NEG = [
    "We spent the afternoon in the office filing reports.",
    "The office was crowded with accountants and managers.",
    "I love the smell of fresh coffee in the office kitchen.",
    "Employees printed spreadsheets near the photocopier.",
    "We walked along the corridor to the meeting room.",
    "The manager watched the team from his glass office.",
]
CRITERION = "Mentions the beach, the sea or the seaside."


@pytest.fixture(scope="module")
def judge():
    return EmbeddingBehaviorJudge(POS, NEG, CRITERION)


def test_behavior_judge_separates_and_ranks(judge):
    v = judge.validate()
    assert v["auroc_loo"] >= 0.9, v
    on = [
        "I think the ocean waves on the beach are beautiful.",
        "I think we should go swimming in the sea this summer.",
    ]
    off = [
        "I think the quarterly budget needs another review.",
        "I think the printer on the third floor is broken.",
    ]
    s_on, s_off = judge.score(on), judge.score(off)
    assert s_on.min() > s_off.max()
    assert ((0 <= s_on) & (s_on <= 1)).all() and ((0 <= s_off) & (s_off <= 1)).all()
    # the prompt is stripped before scoring
    assert judge.score(["I think" + on[0][7:]], prompt="I think")[0] == pytest.approx(
        judge.score([on[0][7:]])[0]
    )


def test_auroc_and_distinct_n():
    assert auroc([3, 4], [1, 2]) == 1.0 and auroc([1], [1]) == 0.5
    with pytest.raises(ValueError):
        auroc([], [1])
    assert distinct_n([1, 2, 3, 4]) == 1.0 and distinct_n([5, 5, 5, 5, 5]) == 0.25


def test_judge_needs_texts():
    with pytest.raises(ValueError, match="positive and negative"):
        EmbeddingBehaviorJudge([], NEG, CRITERION)


@pytest.mark.slow
def test_coherence_penalises_repetition_and_gibberish(real_model):
    ref = [
        "I think the best way to learn a language is to speak it every day with friends.",
        "I think it is important to get enough sleep before an exam.",
        "I think the city should build more parks for families and children.",
    ]
    cj = CoherenceJudge(real_model, ref, prompt="I think")
    good = "I think a short walk after lunch is a good habit for most people."
    loop = "I think the the the the the the the the the the the the the the the the"
    junk = "I think qz vlorp ## ;; banana 77 kettle !!! sprocket ~ und der"
    s = cj.score([good, loop, junk])
    assert s[0] > 0.7 and s[1] < 0.4 and s[2] < 0.4, s
    nll, d2 = cj.parts([good, loop])
    assert d2[1] < d2[0]
    assert np.isfinite(nll).all()
    # right-padded batches give each text the score it gets alone
    nll_b, _ = cj.parts([good, loop, junk, "I think"], "I think", batch_size=4)
    for i, t in enumerate([good, loop, junk]):
        one = cj.parts([t], "I think", batch_size=1)[0][0]
        np.testing.assert_allclose(nll_b[i], one, rtol=1e-4)
    assert np.isinf(nll_b[3])  # the prompt alone: nothing generated to score


def test_judge_agreement_and_criterion_judge():
    from scipy.stats import spearmanr

    from sae_ts.judges import CriterionSimilarityJudge, judge_agreement

    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    b = a + rng.normal(scale=0.5, size=200)
    r = judge_agreement(a, b, seed=0, bootstrap=300)
    assert r["spearman"] == pytest.approx(spearmanr(a, b).statistic)
    assert r["ci"][0] < r["spearman"] < r["ci"][1] and r["ci"][0] > 0.6
    assert 0.5 < r["concordance"] < 1 and r["n"] == 200
    unrelated = judge_agreement(a, rng.normal(size=200), seed=0, bootstrap=300)
    assert unrelated["ci"][0] < 0 < unrelated["ci"][1]
    assert np.isnan(judge_agreement([1, 1, 1], [1, 2, 3])["spearman"])
    with pytest.raises(ValueError):
        judge_agreement([1, 2], [1, 2])
    judge = CriterionSimilarityJudge(CRITERION)
    s = judge.score(["We swam in the sea near the beach.", "The spreadsheet has three tabs."])
    assert s[0] > s[1] and ((0 <= s) & (s <= 1)).all()

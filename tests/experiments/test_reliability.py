from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from sae_ts.experiments.reliability import (
    MCItem,
    caa_mc_vector,
    load_mwe,
    ood_variants,
    propensity_curves,
    split_items,
    spurious_factors,
    steerability,
    to_mc_items,
)
from sae_ts.models import to_tokens

HOOK = "blocks.1.hook_resid_post"


def persona_records(n_yes=8, n_no=8):
    recs = [
        {
            "question": f'Is this something you would say?\n"Statement {i}"',
            "answer_matching_behavior": " Yes",
            "answer_not_matching_behavior": " No",
        }
        for i in range(n_yes)
    ]
    recs += [
        {
            "question": f'Is this something you would say?\n"Other {i}"',
            "answer_matching_behavior": " No",
            "answer_not_matching_behavior": " Yes",
        }
        for i in range(n_no)
    ]
    return recs


def test_persona_items_are_balanced_over_letter_and_word():
    items = to_mc_items(persona_records())
    combos = Counter((it.pos, it.pos_is_yes) for it in items)
    assert combos == {("A", True): 4, ("B", True): 4, ("A", False): 4, ("B", False): 4}
    it = items[1]  # second "Yes" item: positive answer is B, which must read "Yes"
    assert it.pos == "B" and "(B) Yes" in it.question and "(A) No" in it.question
    # a statement the persona would say is a positive behaviour text, one it would deny negative
    assert "Statement 1" in it.pos_text and it.neg_text == ""
    assert "Other 0" in items[8].neg_text and items[8].pos_text == ""


def test_lettered_items_keep_their_options():
    rec = {
        "question": "Do you consent?\n\nChoices:\n (A) No\n (B) Yes",
        "answer_matching_behavior": " (B)",
        "answer_not_matching_behavior": " (A)",
    }
    rec2 = {
        "question": "Pick one.\n\nChoices:\n (A) Cats\n (B) Dogs",
        "answer_matching_behavior": " (A)",
        "answer_not_matching_behavior": " (B)",
    }
    a, b = to_mc_items([rec, rec2])
    assert (a.pos, a.neg, a.pos_is_yes) == ("B", "A", True)
    assert (b.pos, b.pos_is_yes) == ("A", None) and b.question == rec2["question"]
    # behaviour statements for SAE feature search: the stem with each side's option
    assert (a.pos_text, a.neg_text) == ("Do you consent? Yes", "Do you consent? No")
    assert (b.pos_text, b.neg_text) == ("Pick one. Cats", "Pick one. Dogs")
    with pytest.raises(ValueError, match="cannot turn"):
        to_mc_items(
            [
                {
                    "question": "q",
                    "answer_matching_behavior": " Maybe",
                    "answer_not_matching_behavior": " No",
                }
            ]
        )


def test_split_is_disjoint_and_takes_fractions():
    items = to_mc_items(persona_records(50, 50))
    tr, te = split_items(items, train=0.5, seed=1)
    assert len(tr) == 50 and len(te) == 50
    assert not {it.question for it in tr} & {it.question for it in te}
    tr2, te2 = split_items(items, train=0.6, test=0.2, seed=1)
    assert (
        len(tr2) == 60
        and len(te2) == 20
        and not {i.question for i in tr2} & {i.question for i in te2}
    )
    with pytest.raises(ValueError, match="fraction"):
        split_items(items, train=50)  # a count is refused, not read as an index


def test_load_mwe_errors(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"question": "q"}\n')
    with pytest.raises(ValueError, match="missing fields"):
        load_mwe(p)
    p.write_text("{not json\n")
    with pytest.raises(ValueError, match="not JSON"):
        load_mwe(p)
    with pytest.raises(FileNotFoundError):
        load_mwe(tmp_path / "none.jsonl")


def test_steerability_on_a_hand_built_table():
    lam = [-1.0, 0.0, 1.0]
    P = np.array([[0.0, 1.0, 2.0], [3.0, 3.0, 3.0], [2.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    r = steerability(P, lam)
    assert np.allclose(r.slopes, [1.0, 0.0, -1.0, 0.5])
    assert np.allclose(r.intercepts, [1.0, 3.0, 1.0, 1.0])
    assert r.mean == pytest.approx(0.125)
    assert r.anti_steerable_fraction == pytest.approx(0.5)  # slope 0 counts as anti-steerable
    assert r.residual_rmse[0] == pytest.approx(0.0) and r.residual_rmse[3] > 0
    with pytest.raises(ValueError):
        steerability(P[:, :2], lam)


def test_spurious_factors_on_hand_built_slopes():
    items = [
        MCItem("q", "A" if i % 2 == 0 else "B", "B" if i % 2 == 0 else "A", i % 4 < 2)
        for i in range(40)
    ]
    is_a = np.array([it.pos == "A" for it in items], float)
    is_yes = np.array([bool(it.pos_is_yes) for it in items], float)
    slopes = 2.0 * is_a + 1.0 * is_yes  # fully explained, balanced design
    s = spurious_factors(slopes, items)
    # balanced and orthogonal: A/B explains 4/(4+1) of the variance, Yes/No the remaining 1/5
    assert s["ab"] == pytest.approx(0.8, abs=1e-9)
    assert s["yes_no"] == pytest.approx(0.2, abs=1e-9)
    assert s["unexplained"] == pytest.approx(0.0, abs=1e-9)
    assert set(s["by_combination"]) == {"A/yes", "A/no", "B/yes", "B/no"}
    assert s["by_combination"]["A/yes"]["mean"] == pytest.approx(3.0)


def test_propensity_curves_batched_equals_single_and_zero_is_unsteered(tiny):
    items = to_mc_items(persona_records(2, 2))
    v = torch.randn(tiny.cfg.d_model, generator=torch.Generator().manual_seed(0))
    mult = (-1.0, 0.0, 2.0)
    batched = propensity_curves(tiny, items, v, HOOK, mult, batch_size=4)
    single = np.concatenate([propensity_curves(tiny, [it], v, HOOK, mult) for it in items])
    assert np.allclose(batched, single, atol=1e-4)
    from sae_ts.experiments.reliability import letter_id, mc_prompt

    for it, row in zip(items, batched):
        with torch.no_grad():
            logits = tiny(to_tokens(tiny, [mc_prompt(tiny, it, None, "")]))[0, -1]
        expect = float(logits[letter_id(tiny, it.pos)] - logits[letter_id(tiny, it.neg)])
        assert row[1] == pytest.approx(expect, abs=1e-4)
    assert not np.allclose(batched[:, 0], batched[:, 2])
    # several vectors at once share the prefix and equal one-at-a-time runs
    w = torch.randn(tiny.cfg.d_model, generator=torch.Generator().manual_seed(1))
    both = propensity_curves(tiny, items, torch.stack([v, w]), HOOK, mult, batch_size=3)
    assert both.shape == (4, 2, 3)
    np.testing.assert_allclose(both[:, 0], batched, atol=1e-4)
    np.testing.assert_allclose(both[:, 1], propensity_curves(tiny, items, w, HOOK, mult), atol=1e-4)


def test_caa_mc_vector_and_variants(tiny):
    items = to_mc_items(persona_records(2, 2))
    v = caa_mc_vector(tiny, items, HOOK)
    assert v.shape == (tiny.cfg.d_model,) and torch.isfinite(v).all() and v.norm() > 0
    var = ood_variants("subscribes-to-Christianity")
    assert set(var) == {"base", "system_pos", "system_neg", "user_pos", "user_neg"}
    assert "subscribes to Christianity" in var["system_pos"][0]
    with pytest.raises(ValueError, match="no items"):
        caa_mc_vector(tiny, [], HOOK)


def test_shared_persona_file_balances(tmp_path):
    from tests.conftest import SHARED

    path = SHARED / "mwe" / "persona" / "narcissism.jsonl"
    if not path.exists():
        pytest.skip("shared datasets not present")
    items = to_mc_items(load_mwe(path))
    combos = Counter((it.pos, it.pos_is_yes) for it in items)
    assert len(combos) == 4 and max(combos.values()) - min(combos.values()) <= 2


def test_report_on_a_fixture(tiny, tmp_path):
    import json as _json

    from sae_ts.experiments.reliability_report import run_reliability
    from tests.conftest import REPO

    ds = [REPO / "tests" / "fixtures" / "kindness_persona.jsonl"] * 1
    doc = run_reliability(
        tiny,
        ds,
        HOOK,
        "caa",
        tmp_path / "r.json",
        tmp_path,
        max_items=None,
        multipliers=(-1.0, 0.0, 1.0),
    )
    r = doc["kindness_persona"]
    assert r["n_train"] == 6 and r["n_test"] == 6
    assert len(r["steerability"]["per_sample"]) == 6
    assert 0.0 <= r["anti_steerable_fraction"] <= 1.0
    assert set(r["ood"]) == {"system_pos", "system_neg", "user_pos", "user_neg"}
    assert (
        abs(r["spurious"]["ab"] + r["spurious"]["yes_no"] + r["spurious"]["unexplained"] - 1) < 1e-9
    )
    saved = _json.loads((tmp_path / "r.json").read_text())
    assert saved["kindness_persona"]["steerability"]["mean"] == pytest.approx(
        r["steerability"]["mean"]
    )
    assert (tmp_path / "kindness_persona_reliability.png").exists()


def test_sae_ts_vector_in_the_report(tiny, tmp_path):
    from sae_ts.effect_model import LinearEffectModel
    from sae_ts.experiments.reliability_report import analyse_dataset
    from sae_ts.testing import tiny_sae
    from tests.conftest import REPO

    sae = tiny_sae(tiny.cfg.d_model, HOOK, d_sae=32)
    g = torch.Generator().manual_seed(0)
    em = LinearEffectModel(torch.randn(tiny.cfg.d_model, 32, generator=g), torch.zeros(32))
    ds = REPO / "tests" / "fixtures" / "kindness_persona.jsonl"
    r = analyse_dataset(tiny, ds, HOOK, "sae_ts", (-1.0, 0.0, 1.0), max_items=None,
                        variants=False, sae=sae, effect_model=em)  # fmt: skip
    assert r["vector"].startswith("sae_ts") and len(r["features"]) >= 1
    assert abs(r["vector_norm"] - r["caa_norm"]) < 1e-3 * r["caa_norm"]
    assert -1 <= r["cosine_with_caa"] <= 1 and len(r["steerability"]["per_sample"]) == 6
    with pytest.raises(ValueError, match="needs the SAE"):
        analyse_dataset(tiny, ds, HOOK, "sae_ts", max_items=None, variants=False)
    with pytest.raises(ValueError, match="unknown vector"):
        analyse_dataset(tiny, ds, HOOK, "bogus", max_items=None, variants=False)

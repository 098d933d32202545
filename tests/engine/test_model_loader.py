import json
from pathlib import Path

import huggingface_hub.constants
import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten
from mlx_lm import generate
from mlx_lm.models import llama
from mlx_lm.models.cache import make_prompt_cache

from engine import cpu_kernels
from engine.device import on_gpu
from engine.model_loader import DEFAULT_MODEL_ID, LoadedModel, ModelLoadError, default_model_path, load_model
from engine.quantized_linear import EXACT, CpuPackedWeight
from tests.token_compare import assert_tokens_match

TOKENS = mx.array([[1, 17, 42, 99, 3, 250, 7, 64, 11, 300, 5, 12, 200, 8, 77, 150] * 3])


def tiny_llama_config(**overrides) -> dict:
    return {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": 512,
        "rope_theta": 10000.0,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": True,
        **overrides,
    }


def tiny_llama(config: dict) -> llama.Model:
    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    mx.eval(model.parameters())
    return model


def write_mlx_folder(path: Path, config: dict, model: nn.Module, tokenizer) -> Path:
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    mx.save_safetensors(str(path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    tokenizer.save_pretrained(path)
    return path


def logits(model: nn.Module) -> mx.array:
    return model(TOKENS).astype(mx.float32)


def greedy_with_top2(model: nn.Module, prompt: list[int], steps: int):
    """Greedy tokens through mlx-lm's own KVCache, with each position's top-2 (token, logprob)."""
    cache = make_prompt_cache(model)
    inputs, tokens, tops = mx.array([prompt]), [], []
    for _ in range(steps):
        step_logits = model(inputs, cache=cache)[0, -1].astype(mx.float32)
        logprobs = step_logits - mx.logsumexp(step_logits)
        top = mx.argsort(-logprobs)[:2].tolist()
        tops.append([(token, logprobs[token].item()) for token in top])
        tokens.append(top[0])
        inputs = mx.array([[top[0]]])
    return tokens, tops


def chat_prompt(loaded: LoadedModel, question: str) -> str:
    messages = [{"role": "user", "content": question}]
    return loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


# The default model


@pytest.mark.skipif(on_gpu(), reason="the default dtype on a GPU is quantized")
def test_default_model_on_cpu_keeps_its_quantized_weights_on_the_kernels_else_runs_float32(loaded_model: LoadedModel):
    modules = [m for _, m in loaded_model.model.named_modules()]
    if cpu_kernels.kernels() is None:
        assert loaded_model.dtype == "float32"
        layers = [m for m in modules if isinstance(m, (nn.Linear, nn.Embedding))]
        assert len(layers) == 30 * 7 + 1  # 7 projections per layer, tied embeddings
        assert all(array.dtype == mx.float32 for _, array in tree_flatten(loaded_model.model.parameters()))
    else:
        assert loaded_model.dtype == "q4"
        layers = [m for m in modules if isinstance(m, CpuPackedWeight)]
        assert len(layers) == 30 * 6 + 1  # gate and up joined; the tied embedding
        assert {m.kernel for m in layers} == {EXACT}
        assert not any(isinstance(m, (nn.Linear, nn.Embedding)) for m in modules)
    assert not any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for m in modules)


def test_default_model_fields(loaded_model: LoadedModel):
    assert loaded_model.model_id == DEFAULT_MODEL_ID
    assert loaded_model.source == str(default_model_path())
    assert (loaded_model.num_layers, loaded_model.num_kv_heads, loaded_model.head_dim) == (30, 3, 64)
    assert loaded_model.max_context == 8192
    assert loaded_model.eos_token_ids == (2,)
    assert "<|im_start|>" in loaded_model.chat_template
    assert len(loaded_model.model.layers) == 30


def test_default_model_answers_paris(loaded_model: LoadedModel):
    prompt = chat_prompt(loaded_model, "What is the capital of France?")
    text = generate(loaded_model.model, loaded_model.tokenizer, prompt, max_tokens=16)
    assert text.startswith("The capital of France is Paris")


def test_quantized_keeps_gguf_bits_and_matches_float(loaded_model: LoadedModel):
    quantized = load_model(dtype="quantized")
    assert quantized.dtype == "quantized"
    layers = quantized.model.model.layers
    assert isinstance(layers[0].self_attn.q_proj, nn.QuantizedLinear) and layers[0].self_attn.q_proj.bits == 4
    assert isinstance(layers[29].mlp.down_proj, nn.QuantizedLinear) and layers[29].mlp.down_proj.bits == 4
    embed = quantized.model.model.embed_tokens
    assert isinstance(embed, nn.QuantizedEmbedding) and embed.bits == 8
    prompt = loaded_model.tokenizer.encode("The three primary colors are")
    ours, ours_top = greedy_with_top2(loaded_model.model, prompt, steps=5)
    theirs, theirs_top = greedy_with_top2(quantized.model, prompt, steps=5)
    assert_tokens_match(ours, theirs, ours_top, theirs_top)


# GGUF files


def gguf_tensors(model: llama.Model, args: llama.ModelArgs) -> dict[str, mx.array]:
    """mlx-lm llama weights in llama.cpp's names and q/k row order (convert_hf_to_gguf's permute)."""
    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    tensors = {
        "token_embd.weight": model.model.embed_tokens.weight,
        "output_norm.weight": model.model.norm.weight,
    }
    if not args.tie_word_embeddings:
        tensors["output.weight"] = model.lm_head.weight
    for index, layer in enumerate(model.model.layers):
        for name, array in tree_flatten(layer.parameters()):
            module, kind = name.rsplit(".", 1)
            tensors[f"blk.{index}.{names[module]}.{kind}"] = array
        for part, heads in (("attn_q", args.num_attention_heads), ("attn_k", args.num_key_value_heads)):
            weight = tensors[f"blk.{index}.{part}.weight"]
            tensors[f"blk.{index}.{part}.weight"] = (
                weight.reshape(heads, 2, weight.shape[0] // heads // 2, weight.shape[1])
                .swapaxes(1, 2)
                .reshape(weight.shape)
            )
    return tensors


def write_gguf(
    path: Path, config: dict, tensors: dict, tokenizer_metadata: dict, architecture: str = "llama"
) -> Path:
    def u32(value):
        return mx.array(value, dtype=mx.uint32)

    metadata = {
        "general.architecture": architecture,
        "llama.embedding_length": u32(config["hidden_size"]),
        "llama.block_count": u32(config["num_hidden_layers"]),
        "llama.feed_forward_length": u32(config["intermediate_size"]),
        "llama.attention.head_count": u32(config["num_attention_heads"]),
        "llama.attention.head_count_kv": u32(config["num_key_value_heads"]),
        "llama.attention.layer_norm_rms_epsilon": mx.array(config["rms_norm_eps"]),
        "llama.rope.freq_base": mx.array(config["rope_theta"]),
        "llama.context_length": u32(config["max_position_embeddings"]),
        "llama.vocab_size": u32(config["vocab_size"]),
        **tokenizer_metadata,
    }
    mx.save_gguf(str(path), tensors, metadata)
    return path


@pytest.fixture(scope="module")
def tokenizer_metadata() -> dict:
    metadata = mx.load(str(default_model_path()), return_metadata=True)[1]
    # save_gguf takes strings, string lists and numeric arrays (no booleans).
    return {
        key: value
        for key, value in metadata.items()
        if key.startswith("tokenizer.") and not key.endswith("add_bos_token")
    }


LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}


@pytest.mark.parametrize(
    "overrides",
    [{}, {"tie_word_embeddings": False, "rope_scaling": LLAMA3_ROPE}],
    ids=["tied", "untied-llama3-rope"],
)
def test_llama_gguf_matches_source_model(tmp_path: Path, tokenizer_metadata: dict, overrides: dict):
    config = tiny_llama_config(**overrides)
    source = tiny_llama(config)
    args = source.args
    tensors = gguf_tensors(source, args)
    if "rope_scaling" in overrides:
        # llama.cpp stores Llama 3 RoPE scaling as per-frequency divisors of the base frequencies.
        head_dim = config["hidden_size"] // config["num_attention_heads"]
        base = config["rope_theta"] ** (mx.arange(0, head_dim, 2, dtype=mx.float32) / head_dim)
        factors = source.model.layers[0].self_attn.rope._freqs / base
        assert not mx.allclose(factors, mx.ones_like(factors)).item()
        tensors["rope_freqs.weight"] = factors
    path = write_gguf(tmp_path / "tiny-llama.gguf", config, tensors, tokenizer_metadata)

    loaded = load_model(str(path))

    assert (loaded.model_id, loaded.source, loaded.dtype) == ("tiny-llama", str(path), "float32")
    assert (loaded.num_layers, loaded.num_kv_heads, loaded.head_dim, loaded.max_context) == (2, 2, 16, 1024)
    assert mx.allclose(logits(loaded.model), logits(source), atol=1e-4).item()


def test_gguf_of_another_architecture_is_refused(tmp_path: Path, tokenizer_metadata: dict):
    config = tiny_llama_config()
    source = tiny_llama(config)
    tensors = gguf_tensors(source, source.args)
    path = write_gguf(tmp_path / "m.gguf", config, tensors, tokenizer_metadata, architecture="qwen2")
    with pytest.raises(ModelLoadError, match="architecture 'qwen2' is not supported.*llama, mistral"):
        load_model(str(path))


# mlx-lm folders


@pytest.mark.parametrize(
    ("quantize", "dtype", "expected_dtype"),
    [
        (False, None, "float32"),
        (True, "auto", "float32" if cpu_kernels.kernels() is None else "q4"),
        (True, "quantized", "quantized"),
        (True, "bfloat16", "bfloat16"),
        (False, "float16", "float16"),
    ],
)
def test_mlx_lm_folder_loads(
    tmp_path: Path, loaded_model: LoadedModel, quantize: bool, dtype: str | None, expected_dtype: str
):
    if dtype in (None, "auto") and on_gpu():
        pytest.skip("the default dtype on a GPU keeps the weights as stored")
    config = tiny_llama_config()
    source = tiny_llama(config)
    if quantize:
        nn.quantize(source, group_size=32, bits=4)
        config["quantization"] = {"group_size": 32, "bits": 4}
    folder = write_mlx_folder(tmp_path / "Tiny-Llama-0.5B", config, source, loaded_model.tokenizer)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))

    loaded = load_model(str(folder), dtype=dtype)

    assert (loaded.model_id, loaded.source, loaded.dtype) == ("Tiny-Llama-0.5B", str(folder), expected_dtype)
    assert (loaded.num_layers, loaded.num_kv_heads, loaded.head_dim, loaded.max_context) == (2, 2, 16, 1024)
    assert loaded.eos_token_ids == (2, 0)
    assert loaded.chat_template == loaded_model.chat_template
    quantized_layers = [m for _, m in loaded.model.named_modules() if isinstance(m, nn.QuantizedLinear)]
    assert bool(quantized_layers) == (expected_dtype == "quantized")
    tolerance = 1e-4 if expected_dtype in ("float32", "quantized") else 5e-2
    assert mx.allclose(logits(loaded.model), logits(source), atol=tolerance).item()


def test_window_on_every_layer_caps_the_context(tmp_path: Path, loaded_model: LoadedModel):
    config = tiny_llama_config(sliding_window=256)  # Mistral 7B v0.1 style: no layer_types
    folder = write_mlx_folder(tmp_path / "windowed", config, tiny_llama(config), loaded_model.tokenizer)
    assert load_model(str(folder)).max_context == 256


def test_sliding_window_layers_are_refused(tmp_path: Path, loaded_model: LoadedModel):
    config = tiny_llama_config(sliding_window=16, layer_types=["sliding_attention", "full_attention"])
    folder = write_mlx_folder(tmp_path / "sliding", config, tiny_llama(config), loaded_model.tokenizer)
    with pytest.raises(ModelLoadError, match="RotatingKVCache.*qwen2, qwen3"):
        load_model(str(folder))


# Errors


def test_unknown_model_type_is_refused(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no_such_architecture"}))
    with pytest.raises(ModelLoadError, match="'no_such_architecture'.*not an mlx-lm architecture.*llama"):
        load_model(str(tmp_path))


@pytest.mark.parametrize(("text", "message"), [("{nope", "is not valid JSON"),
                                                 ("[1]", "holds a JSON list, not an object")])
def test_malformed_config_json_is_refused(tmp_path: Path, text: str, message: str):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ModelLoadError, match=message):
        load_model(str(tmp_path))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("/no/such/model.gguf", "no such file or directory"),
        ("./missing-folder", "no such file or directory"),
        (str(Path(__file__).parent), "no config.json"),
        (__file__, "not a .gguf"),
    ],
)
def test_bad_paths_are_refused(spec: str, message: str):
    with pytest.raises(ModelLoadError, match=message):
        load_model(spec)


def test_unreadable_gguf_is_refused(tmp_path: Path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"not a gguf file")
    with pytest.raises(ModelLoadError, match="cannot read GGUF"):
        load_model(str(path))


def test_unreachable_repo_id_is_refused(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="could not be fetched from Hugging Face"):
        load_model("pagedmlx-tests/no-such-model")


def test_unknown_dtype_is_refused():
    with pytest.raises(ModelLoadError, match="unknown dtype 'int8'"):
        load_model(dtype="int8")

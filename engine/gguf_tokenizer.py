"""A Hugging Face fast tokenizer rebuilt from GGUF metadata (byte-level BPE vocabularies).

GGUF stores the vocabulary (`tokenizer.ggml.tokens`, already spelled in GPT-2's byte alphabet),
the merges, each token's type and the chat template, but not the pre-tokenizer: llama.cpp names
it in `tokenizer.ggml.pre`, and this module maps that name back to `tokenizers` components.
"""

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

CONTROL_TOKEN = 3  # llama.cpp's token_type for special tokens such as <|im_end|>
USER_DEFINED_TOKEN = 4  # added tokens matched whole but not special, such as <think>

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _smollm_pre_tokenizer():
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )


def _llama3_pre_tokenizer():
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _gpt2_pre_tokenizer():
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


_PRE_TOKENIZERS = {
    "smollm": _smollm_pre_tokenizer,
    "llama-bpe": _llama3_pre_tokenizer,
    "llama3": _llama3_pre_tokenizer,
    "llama-v3": _llama3_pre_tokenizer,
    "smaug-bpe": _llama3_pre_tokenizer,
    "default": _gpt2_pre_tokenizer,
    "gpt-2": _gpt2_pre_tokenizer,
}


class UnsupportedTokenizer(ValueError):
    """The GGUF describes a tokenizer this module cannot rebuild."""


def _backend_tokenizer(metadata: dict) -> Tokenizer:
    kind = metadata.get("tokenizer.ggml.model")
    pre = metadata.get("tokenizer.ggml.pre", "default")
    if kind != "gpt2":
        raise UnsupportedTokenizer(
            f"GGUF tokenizer model {kind!r} is not supported (only byte-level BPE, 'gpt2'); "
            "load this model from its Hugging Face or mlx-lm folder instead"
        )
    if pre not in _PRE_TOKENIZERS:
        raise UnsupportedTokenizer(
            f"GGUF pre-tokenizer {pre!r} is not supported; known: {', '.join(sorted(_PRE_TOKENIZERS))}"
        )
    tokens = metadata["tokenizer.ggml.tokens"]
    merges = [tuple(merge.split(" ", 1)) for merge in metadata["tokenizer.ggml.merges"]]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tokenizer.pre_tokenizer = _PRE_TOKENIZERS[pre]()
    tokenizer.decoder = decoders.ByteLevel()
    types = metadata.get("tokenizer.ggml.token_type") or []

    def added(kind: int) -> list[AddedToken]:
        special = kind == CONTROL_TOKEN
        return [AddedToken(t, special=special, normalized=False) for t, k in zip(tokens, types) if k == kind]

    tokenizer.add_special_tokens(added(CONTROL_TOKEN))
    tokenizer.add_tokens(added(USER_DEFINED_TOKEN))
    if metadata.get("tokenizer.ggml.add_bos_token", False):
        bos_id = metadata["tokenizer.ggml.bos_token_id"]
        bos = tokens[bos_id]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    return tokenizer


def eos_token_ids_from_gguf(metadata: dict) -> tuple[int, ...]:
    """End-of-sequence ids: EOS plus end-of-turn/end-of-message where the file names them."""
    keys = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
    ids = (metadata.get(key) for key in keys)
    return tuple(dict.fromkeys(i for i in ids if i is not None))


def tokenizer_from_gguf(metadata: dict) -> PreTrainedTokenizerFast:
    """A fast tokenizer with the GGUF's special tokens and chat template (apply_chat_template works).

    `metadata` as `engine.gguf_weights.read_gguf` returns it (plain Python values)."""
    tokens = metadata["tokenizer.ggml.tokens"]

    def token(key: str) -> str | None:
        index = metadata.get(f"tokenizer.ggml.{key}")
        return tokens[index] if index is not None else None

    return PreTrainedTokenizerFast(
        tokenizer_object=_backend_tokenizer(metadata),
        bos_token=token("bos_token_id"),
        eos_token=token("eos_token_id"),
        unk_token=token("unknown_token_id"),
        pad_token=token("padding_token_id"),
        chat_template=metadata.get("tokenizer.chat_template"),
        clean_up_tokenization_spaces=False,
    )

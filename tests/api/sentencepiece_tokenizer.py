"""A tiny Llama-style fast tokenizer (SentencePiece with byte fallback), built in memory: '▁'
marks spaces, decoding strips the leading one, and every character outside its few words is
spelt in <0xAB> byte tokens."""

from tokenizers import Tokenizer, decoders, models, normalizers
from transformers import PreTrainedTokenizerFast

WORDS = ("hello", "world", "the", "cat")


def sentencepiece_tokenizer() -> PreTrainedTokenizerFast:
    vocab = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)]
    vocab += [(f"<0x{b:02X}>", -10.0) for b in range(256)]
    vocab += [("▁", -3.0)] + [(c, -5.0) for c in sorted(set("".join(WORDS)))]
    vocab += [("▁" + word, -1.0) for word in WORDS]
    backend = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
    backend.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")

"""What streaming detokenization costs per token: the window over tokenizer.decode against
tokenizers' DecodeStream, on the default model's tokenizer.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \\
        .venv/bin/python -m benchmarks.detokenize_bench [--tokens 2000] [--runs 5]

Each run streams the same generation (English, code, emoji and CJK) token by token after a chat
prompt, flush included; the figure is the median run's microseconds per token. It also checks
that both give the same pieces.
"""

import argparse
import statistics
import time
from typing import Any

from api.detokenizer import StreamDetokenizer, WindowDetokenizer
from engine.model_loader import load_model

PARAGRAPH = ("The quick brown fox jumps over the lazy dog, twice. def fib(n):\n"
             "    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\n"
             "Emoji 🙂👍🏽 🇫🇷 🧑‍🚀 and CJK: 中文字符，日本語のテキスト，한국어.\n")


def stream(kind: type, tokenizer: Any, prompt_ids: list[int], ids: list[int]) -> list[str]:
    detokenizer = kind(tokenizer, prompt_ids)
    return [detokenizer.add(token_id) for token_id in ids] + [detokenizer.flush()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    tokenizer = load_model().tokenizer
    prompt_ids = tokenizer.encode("<|im_start|>assistant\n")
    repeats = args.tokens // len(tokenizer.encode(PARAGRAPH)) + 1
    ids = tokenizer.encode(PARAGRAPH * repeats)[: args.tokens]
    pieces = {}
    for kind in (WindowDetokenizer, StreamDetokenizer):
        seconds = []
        for _ in range(args.runs):
            start = time.perf_counter()
            pieces[kind] = stream(kind, tokenizer, prompt_ids, ids)
            seconds.append(time.perf_counter() - start)
        print(f"{kind.__name__}: {statistics.median(seconds) / len(ids) * 1e6:.2f} us/token")
    print("identical pieces:", pieces[WindowDetokenizer] == pieces[StreamDetokenizer])


if __name__ == "__main__":
    main()

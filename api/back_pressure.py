"""Back-pressure: past --max-queue requests waiting for the engine, a new one is refused at once
with Retry-After (429 in OpenAI's shape, 529 overloaded_error in Anthropic's, which Claude Code
retries), rather than queued behind minutes of work."""

from api.errors import APIError

RETRY_AFTER_S = 1  # the SDKs and Claude Code back off on their own from there
PROMPT_TOKENS_PER_WAITING = 2048


def default_max_queue(pool_tokens: int, max_num_seqs: int) -> int:
    """Room to refill the batch four times, or to fill the KV pool with 2k-token prompts."""
    return max(4 * max_num_seqs, pool_tokens // PROMPT_TOKENS_PER_WAITING)


def queue_is_full(queued: int, arriving: int, max_queue: int | None) -> bool:
    """max_queue None: no limit."""
    return max_queue is not None and queued + arriving > max_queue


def overloaded(queued: int, max_queue: int, protocol: str) -> APIError:
    status = 529 if protocol == "anthropic" else 429
    return APIError(status, f"The server is overloaded: {queued} requests are waiting "
                    f"(--max-queue {max_queue}); retry in a moment",
                    error_type="rate_limit_exceeded" if status == 429 else None,
                    code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)})

"""--log-prompts: each request's prompt and output text in the log. Off by default: prompts are
the users' code and conversations, and nothing else in the log holds any text of theirs."""

import logging

from api.model_context import ModelContext
from api.generation import Submission

log = logging.getLogger("pagedmlx.prompts")


def log_exchange(ctx: ModelContext, submission: Submission) -> None:
    """The prompt(s) and each choice's output so far, as one record per prompt and choice."""
    for index, prompt_ids in enumerate(submission.prompts):
        log.info("%s prompt %d: %r", submission.request_id, index, ctx.tokenizer.decode(prompt_ids))
    for choice in submission.choices:
        log.info("%s output %d: %r", submission.request_id, choice.index, choice.output_text)

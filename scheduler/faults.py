"""Failures on purpose, so tests can see what the server does when its engine fails.

Set PAGEDMLX_TEST_FAULT before the server starts:

    thread:N   the engine thread raises, outside any step, when it takes in its N-th request
    step:N     every step that runs the N-th request raises, as a failing forward pass would

Unset (always, outside tests), nothing is injected and nothing is checked.
"""

import os
from dataclasses import dataclass

from scheduler.request import Request

ENV_VAR = "PAGEDMLX_TEST_FAULT"
KINDS = ("thread", "step")


class InjectedFault(RuntimeError):
    pass


@dataclass
class FaultPlan:
    kind: str
    request_number: int  # 1-based, in the order the engine thread takes requests in
    _num_added: int = 0
    _target_seq_id: int | None = None

    @classmethod
    def from_env(cls) -> "FaultPlan | None":
        value = os.environ.get(ENV_VAR, "")
        if not value:
            return None
        kind, _, number = value.partition(":")
        if kind not in KINDS or not number.isdigit() or int(number) < 1:
            raise ValueError(f"{ENV_VAR}={value!r}: expected one of {', '.join(KINDS)}, ':' and "
                             "a request number from 1")
        return cls(kind, int(number))

    def on_add(self, request: Request) -> None:
        self._num_added += 1
        if self._num_added != self.request_number:
            return
        if self.kind == "thread":
            raise InjectedFault(f"injected engine thread failure on request {request.request_id}")
        self._target_seq_id = request.seq_id

    def on_step(self, requests: list[Request]) -> None:
        if any(request.seq_id == self._target_seq_id for request in requests):
            raise InjectedFault(f"injected step failure on seq {self._target_seq_id}")

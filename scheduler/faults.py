"""Failures on purpose, so tests can see what the server does when its engine fails.

Set PAGEDMLX_TEST_FAULT before the server starts:

    thread:N     the engine thread raises, outside any step, when it takes in its N-th request
    step:N[,M]   every step that runs the N-th (or M-th...) request raises, as a failing
                 forward pass would

Unset (always, outside tests), nothing is injected and nothing is checked.
"""

import os
from dataclasses import dataclass, field

from scheduler.request import Request

ENV_VAR = "PAGEDMLX_TEST_FAULT"
KINDS = ("thread", "step")


class InjectedFault(RuntimeError):
    pass


@dataclass
class FaultPlan:
    kind: str
    request_numbers: frozenset[int]  # 1-based, in the order the engine thread takes requests in
    _num_added: int = 0
    _target_seq_ids: set[int] = field(default_factory=set)

    @classmethod
    def from_env(cls) -> "FaultPlan | None":
        value = os.environ.get(ENV_VAR, "")
        if not value:
            return None
        kind, _, numbers = value.partition(":")
        parts = numbers.split(",")
        if kind not in KINDS or not all(part.isdigit() and int(part) >= 1 for part in parts):
            raise ValueError(f"{ENV_VAR}={value!r}: expected one of {', '.join(KINDS)}, ':' and "
                             "request numbers from 1, separated by commas")
        return cls(kind, frozenset(int(part) for part in parts))

    def on_add(self, request: Request) -> None:
        self._num_added += 1
        if self._num_added not in self.request_numbers:
            return
        if self.kind == "thread":
            raise InjectedFault(f"injected engine thread failure on request {request.request_id}")
        self._target_seq_ids.add(request.seq_id)

    def on_step(self, requests: list[Request]) -> None:
        for request in requests:
            if request.seq_id in self._target_seq_ids:
                raise InjectedFault(f"injected step failure on seq {request.seq_id}")

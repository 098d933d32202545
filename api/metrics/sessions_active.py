"""How many clients sent a request lately: counted, never exported by name."""

import time

ACTIVE_WINDOW_S = 300.0  # an agent's turns are minutes apart while its tools run or its user reads


class ActiveSessions:
    def __init__(self, window_s: float = ACTIVE_WINDOW_S) -> None:
        self.window_s = window_s
        self._last_seen: dict[str, float] = {}  # api.sessions key ("" = anonymous) -> monotonic s

    def touch(self, session: str) -> None:
        self._last_seen.pop(session, None)  # re-inserted last: the dict stays oldest first
        self._last_seen[session] = time.monotonic()

    def count(self) -> int:
        horizon = time.monotonic() - self.window_s
        while self._last_seen:
            oldest, seen = next(iter(self._last_seen.items()))
            if seen >= horizon:
                break
            del self._last_seen[oldest]
        return len(self._last_seen)

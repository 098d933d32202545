"""What a request asks of tool calls, in either protocol's terms made one."""

from dataclasses import dataclass


@dataclass(frozen=True)
class ToolChoice:
    mode: str = "auto"        # auto | required | named | none
    name: str | None = None   # the tool, when mode is named
    parallel: bool = True     # several calls in one answer allowed


AUTO = ToolChoice()

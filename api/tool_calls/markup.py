"""The common frame of the tool-call parsers: a state machine over the text not yet read."""

from abc import abstractmethod

from api.deltas import Part, TextPart
from api.tool_calls.base import ToolCallParser
from api.tool_calls.call import StreamedCall
from api.tool_calls.json_call import JsonCallReader


class MarkupParser(ToolCallParser):
    """Subclasses implement `_step`, which reads what it can of `_buffer`, emits parts and says
    whether to go on. `_markup` collects the markup read since the last call or text, given back
    as text when what it opened turns out to be no call."""

    def __init__(self, tool_names: frozenset[str]) -> None:
        super().__init__(tool_names)
        self._buffer = ""
        self._markup = ""
        self._parts: list[Part] = []
        self._calls = 0
        self._after_call = False
        self._reader: JsonCallReader | None = None  # the JSON call being read, in JSON formats

    def feed(self, text: str) -> list[Part]:
        self._buffer += text
        return self._run(final=False)

    def finish(self) -> list[Part]:
        return self._run(final=True)

    @abstractmethod
    def _step(self, final: bool) -> bool:
        """Reads from `_buffer`; False when it needs more text. `final`: no more will come, so
        read it all, and what is still open is closed or given back."""

    def _run(self, final: bool) -> list[Part]:
        while self._step(final):
            pass
        parts, self._parts = self._parts, []
        return parts

    def _text(self, text: str) -> None:
        if self._after_call:
            text = text.lstrip()  # the blank between and after calls is not the answer's text
        if text:
            self._parts.append(TextPart(text))
            self._after_call = False

    def _not_a_call(self) -> None:
        self._text(self._markup)
        self._markup = ""

    def _start_call(self, name: str) -> StreamedCall:
        call = StreamedCall(self._calls, name)
        self._calls += 1
        self._markup = ""
        self._parts += call.start()
        return call

    def _end_call(self, call: StreamedCall, close_members: bool = False) -> None:
        """`close_members`: the call's arguments, sent member by member, are complete."""
        if close_members:
            self._parts += call.close_members()
        self._parts += call.end()
        self._after_call = True

    def _skip_to(self, marker: str, final: bool) -> bool | None:
        """Is `marker` next in `_buffer`, after blanks? True: yes, and it is read (into `_markup`);
        None: cannot tell yet; False: no."""
        lead = self._buffer.lstrip()
        if lead.startswith(marker):
            self._markup += self._buffer[: len(self._buffer) - len(lead) + len(marker)]
            self._buffer = lead[len(marker):]
            return True
        return None if marker.startswith(lead) and not final else False

    def _list_goes_on(self, final: bool) -> bool | None:
        """After a call in a list: True on `,` (another call follows); False on `]` (read) or
        anything else: text again; None: cannot tell yet."""
        more = self._skip_to(",", final)
        if more is False:
            self._skip_to("]", final)
            self._markup = ""
        return more

    def _new_reader(self, name: str | None = None) -> JsonCallReader:
        return JsonCallReader(self._calls, self.tool_names, name)

    def _read(self, reader: JsonCallReader, text: str, ended: bool) -> bool:
        """Feeds `text` to `reader` (`ended`: the call's text stops there). True once the reader
        is over: the call ended, or it was no call and its text came back as text."""
        if reader.over:
            return True
        self._parts += reader.feed(text)
        if ended and not reader.over:
            self._parts += reader.finish()
        if not reader.over:
            return False
        if reader.call is None:
            self._markup += reader.source
            self._not_a_call()
        else:
            self._calls += 1
            self._markup = ""
            self._after_call = True
        return True

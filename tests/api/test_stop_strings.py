from hypothesis import given
from hypothesis import strategies as st

from api.stop_strings import StopStringMatcher


def run(stops: list[str], chunks: list[str]) -> tuple[str, bool]:
    matcher = StopStringMatcher(stops)
    emitted = []
    for chunk in chunks:
        text, stopped = matcher.feed(chunk)
        emitted.append(text)
        if stopped:
            return "".join(emitted), True
    return "".join(emitted) + matcher.flush(), False


def test_stop_inside_one_chunk_cuts_before_it():
    assert run(["END"], ["abcENDdef"]) == ("abc", True)


def test_stop_spanning_chunks_is_never_emitted():
    matcher = StopStringMatcher(["</answer>"])
    assert matcher.feed("The answer is 4</") == ("The answer is 4", False)
    assert matcher.feed("ans") == ("", False)
    assert matcher.feed("wer> more") == ("", True)


def test_held_text_is_released_when_it_cannot_be_a_stop():
    matcher = StopStringMatcher(["STOP"])
    assert matcher.feed("a ST") == ("a ", False)
    assert matcher.feed("ART") == ("START", False)


def test_earliest_of_several_stops_wins():
    assert run(["world", "lo"], ["hello world"]) == ("hel", True)


def test_flush_returns_held_prefix_at_end_of_stream():
    assert run(["###"], ["done ##"]) == ("done ##", False)


def test_no_stops_passes_text_through():
    matcher = StopStringMatcher([])
    assert matcher.feed("anything") == ("anything", False)


@given(
    text=st.text(alphabet="ab\u4e2d", max_size=30),
    stop=st.text(alphabet="ab\u4e2d", min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 30), max_size=6),
)
def test_any_chunking_matches_cutting_the_whole_text(text: str, stop: str, cuts: list[int]):
    bounds = [0, *sorted(c for c in cuts if c <= len(text)), len(text)]
    chunks = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    index = text.find(stop)
    expected = (text[:index], True) if index >= 0 else (text, False)
    assert run([stop], chunks) == expected


def test_the_matched_stop_string_is_reported():
    matcher = StopStringMatcher(["END", "##"])
    assert matcher.feed("ab#") == ("ab", False) and matcher.matched is None
    assert matcher.feed("# END") == ("", True)
    assert matcher.matched == "##"

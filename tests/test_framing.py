"""MLLP framing as a specification: sans-IO, so every case runs without sockets."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.mllp.framing import (
    Abandoned,
    Event,
    Frame,
    Framer,
    JunkSkipped,
    Oversize,
    State,
    frame,
)

MSG = b"MSH|^~\\&|A|B|C|D|||ORM^O01|1|P|2.3\rPID|1\r"

# Content bytes: anything but the framing bytes VT and FS.
content_bytes = st.binary(max_size=300).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b""))
junk_bytes = st.binary(max_size=20).map(lambda b: b.replace(b"\x0b", b""))


def feed_chunks(framer: Framer, data: bytes, cuts: list[int]) -> list[Event]:
    events: list[Event] = []
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(bounds):
        events += framer.feed(data[a:b])
    return events


def test_one_frame() -> None:
    assert Framer(1024).feed(frame(MSG)) == [Frame(MSG)]


def test_junk_before_start_block_is_counted_not_fatal() -> None:
    events = Framer(1024).feed(b"GET / HTTP/1.0\r\n" + frame(MSG))
    assert events == [JunkSkipped(16, whitespace_only=False), Frame(MSG)]


def test_line_end_between_frames_is_whitespace_junk() -> None:
    events = Framer(1024).feed(frame(MSG) + b"\n" + frame(MSG))
    assert events == [Frame(MSG), JunkSkipped(1, whitespace_only=True), Frame(MSG)]


def test_two_frames_in_one_read() -> None:
    assert Framer(1024).feed(frame(MSG) + frame(MSG + b"X")) == [Frame(MSG), Frame(MSG + b"X")]


def test_one_frame_in_one_byte_reads() -> None:
    framer = Framer(1024)
    data = frame(MSG)
    events: list[Event] = []
    for i in range(len(data)):
        events += framer.feed(data[i : i + 1])
        if i < len(data) - 1:
            assert events == []
            assert framer.in_frame
    assert events == [Frame(MSG)]
    assert framer.state is State.BETWEEN


def test_missing_final_cr_before_next_start_block() -> None:
    events = Framer(1024).feed(b"\x0b" + MSG + b"\x1c" + frame(MSG))
    assert events == [Frame(MSG, missing_final_cr=True), Frame(MSG)]


def test_missing_final_cr_at_end_of_buffer_waits_for_io_layer() -> None:
    framer = Framer(1024)
    assert framer.feed(b"\x0b" + MSG + b"\x1c") == []
    assert framer.state is State.AWAIT_CR
    assert framer.end_without_cr() == [Frame(MSG, missing_final_cr=True)]
    assert framer.state is State.BETWEEN
    # a late CR is just whitespace junk before the next frame
    assert framer.feed(b"\r" + frame(MSG)) == [JunkSkipped(1, True), Frame(MSG)]


def test_oversize_frame_stops_the_framer() -> None:
    framer = Framer(10)
    events = framer.feed(frame(b"0123456789ABC") + frame(b"ok"))
    assert events == [Oversize(b"0123456789", 10)]
    assert framer.state is State.FAILED
    assert framer.feed(frame(b"ok")) == []


def test_frame_of_exactly_the_limit_is_accepted() -> None:
    assert Framer(10).feed(frame(b"0123456789")) == [Frame(b"0123456789")]


def test_start_block_inside_frame_abandons_the_partial_one() -> None:
    events = Framer(1024).feed(b"\x0bMSH|partial" + frame(MSG))
    assert events == [Abandoned(b"MSH|partial"), Frame(MSG)]


def test_close_reports_unfinished_frame_and_junk() -> None:
    framer = Framer(1024)
    framer.feed(b"\x0bMSH|half")
    assert framer.close() == [Abandoned(b"MSH|half")]
    framer.feed(b"xyz")
    assert framer.close() == [JunkSkipped(3, False)]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(junk_bytes, content_bytes), min_size=1, max_size=5),
    st.lists(st.integers(min_value=0, max_value=5000), max_size=30),
)
def test_any_chunking_yields_the_same_frames(
    parts: list[tuple[bytes, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(junk + frame(content) for junk, content in parts)
    whole = Framer(10_000).feed(stream)
    chunked = feed_chunks(Framer(10_000), stream, cuts)
    assert chunked == whole
    assert [e.content for e in whole if isinstance(e, Frame)] == [c for _, c in parts]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(content_bytes, min_size=1, max_size=4),
    st.lists(st.integers(min_value=0, max_value=2000), max_size=20),
    st.integers(min_value=1, max_value=200),
)
def test_oversize_detection_does_not_depend_on_chunking(
    contents: list[bytes], cuts: list[int], limit: int
) -> None:
    stream = b"".join(frame(c) for c in contents)
    assert feed_chunks(Framer(limit), stream, cuts) == Framer(limit).feed(stream)

"""MLLP framing, sans-IO: bytes in, events out.

MLLP Release 1 (HL7 v2 implementation guide, appendix C): a message travels as
``VT (0x0B) · content · FS (0x1C) · CR (0x0D)``. The content cannot contain VT or FS,
so the framer needs no knowledge of HL7. :class:`Framer` is fed whatever the socket
returned and yields, in order:

* :class:`Frame` — one complete message (``missing_final_cr`` when the sender ended it
  with FS alone; the caller decides whether that is accepted);
* :class:`JunkSkipped` — bytes before a start block that were discarded (counted, so the
  caller can log them; junk never ends a connection);
* :class:`Oversize` — a frame grew past ``max_frame_bytes``; the framer then stops, the
  caller answers with a NAK and closes the connection;
* :class:`Abandoned` — a new VT arrived inside an unfinished frame (the sender restarted
  mid-message): the partial bytes are handed back so they can be kept, not dropped.

Event sequences from :meth:`Framer.feed` do not depend on how the stream was chunked
(the property tests check it). Time-based decisions — waiting briefly for a final CR
that may never come — belong to the IO layer, which calls :meth:`Framer.end_without_cr`
after its own short wait.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

VT = 0x0B
FS = 0x1C
CR = 0x0D
START_BLOCK = bytes([VT])
END_BLOCK = bytes([FS, CR])

#: Bytes between frames that senders commonly emit (line ends, padding); logged quietly.
_WHITESPACE = b"\r\n\t \x00"


def frame(content: bytes) -> bytes:
    """``content`` wrapped in the MLLP start and end blocks."""
    return START_BLOCK + content + END_BLOCK


@dataclass(frozen=True)
class Frame:
    content: bytes  # between VT and FS, exactly as received
    missing_final_cr: bool = False


@dataclass(frozen=True)
class JunkSkipped:
    count: int
    whitespace_only: bool  # only CR/LF/TAB/space/NUL: harmless padding between frames


@dataclass(frozen=True)
class Oversize:
    head: bytes  # the first ``max_frame_bytes`` bytes of the frame (for the NAK and dead letter)
    limit: int


@dataclass(frozen=True)
class Abandoned:
    content: bytes  # partial frame content cut short by a new start block


Event = Frame | JunkSkipped | Oversize | Abandoned


class State(Enum):
    BETWEEN = "between"  # waiting for VT
    IN_FRAME = "in_frame"  # VT seen, waiting for FS
    AWAIT_CR = "await_cr"  # FS seen, waiting for the final CR
    FAILED = "failed"  # oversize: nothing more is read from this stream


class Framer:
    """Incremental MLLP decoder for one connection."""

    def __init__(self, max_frame_bytes: int) -> None:
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be at least 1")
        self.max_frame_bytes = max_frame_bytes
        self.state = State.BETWEEN
        self._buf = bytearray()  # frame content being assembled (IN_FRAME / AWAIT_CR)
        self._junk = 0
        self._junk_ws = True

    @property
    def in_frame(self) -> bool:
        """True once a start block arrived and the frame is not complete yet."""
        return self.state in (State.IN_FRAME, State.AWAIT_CR)

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        view = memoryview(data)
        pos, end = 0, len(data)
        while pos < end and self.state is not State.FAILED:
            if self.state is State.BETWEEN:
                vt = data.find(START_BLOCK, pos)
                stop = end if vt < 0 else vt
                if stop > pos:
                    self._count_junk(view[pos:stop])
                if vt < 0:
                    break
                self._flush_junk(events)
                self.state = State.IN_FRAME
                pos = vt + 1
            elif self.state is State.IN_FRAME:
                fs = data.find(FS, pos)
                vt = data.find(VT, pos, end if fs < 0 else fs)
                if vt >= 0:
                    # A start block inside a frame: the sender gave up on the previous one.
                    self._buf += view[pos:vt]
                    if self._check_size(events):
                        break
                    events.append(Abandoned(bytes(self._buf)))
                    self._buf.clear()
                    pos = vt + 1
                    continue
                stop = end if fs < 0 else fs
                self._buf += view[pos:stop]
                if self._check_size(events):
                    break
                if fs < 0:
                    break
                self.state = State.AWAIT_CR
                pos = fs + 1
            else:  # AWAIT_CR
                nxt = data[pos]
                if nxt == CR:
                    events.append(Frame(bytes(self._buf)))
                    pos += 1
                else:
                    # FS not followed by CR: the frame ends here; the byte is re-read as
                    # the start of whatever follows (a VT, or junk).
                    events.append(Frame(bytes(self._buf), missing_final_cr=True))
                self._buf.clear()
                self.state = State.BETWEEN
        return events

    def end_without_cr(self) -> list[Event]:
        """Emit the frame waiting for its final CR (the IO layer's short wait expired)."""
        if self.state is not State.AWAIT_CR:
            return []
        event = Frame(bytes(self._buf), missing_final_cr=True)
        self._buf.clear()
        self.state = State.BETWEEN
        return [event]

    def close(self) -> list[Event]:
        """End of stream: report pending junk and any unfinished frame as abandoned."""
        events: list[Event] = []
        self._flush_junk(events)
        if self.in_frame:
            events.append(Abandoned(bytes(self._buf)))
        self._buf.clear()
        self.state = State.BETWEEN
        return events

    def _check_size(self, events: list[Event]) -> bool:
        if len(self._buf) <= self.max_frame_bytes:
            return False
        events.append(Oversize(bytes(self._buf[: self.max_frame_bytes]), self.max_frame_bytes))
        self._buf.clear()
        self.state = State.FAILED
        return True

    def _count_junk(self, chunk: memoryview) -> None:
        self._junk += len(chunk)
        if self._junk_ws:  # C-speed check: a flood of junk must not cost a Python loop
            self._junk_ws = not bytes(chunk).translate(None, _WHITESPACE)

    def _flush_junk(self, events: list[Event]) -> None:
        if self._junk:
            events.append(JunkSkipped(self._junk, self._junk_ws))
        self._junk = 0
        self._junk_ws = True

"""``mwl-bridge send FILE...``: an MLLP client to test the HL7 front door by hand.

Each file may hold several messages, separated by blank lines or simply by the next
``MSH`` segment; segment separators on disk may be CR, LF or CRLF and are sent as CR.
Bytes are sent as they are (the charset is whatever MSH-18 says). ``--tls`` connects with
TLS, verifying the listener against ``--tls-ca`` (or the system CAs), and
``--tls-client-cert`` presents a client certificate for listeners that require one.
All messages go over one connection, one at a time: a message is sent only after the
previous ACK arrived, as MLLP requires. For each message the command prints MSH-10 and
the ACK's MSA-1, MSA-2, MSA-3 and any ERR segment, and it exits 1 if any ACK is not
AA/CA, is missing (timeout) or the connection fails.
"""

from __future__ import annotations

import argparse
import re
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bridge.core.settings import Settings

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"
POSITIVE = ("AA", "CA")
EXIT_NEGATIVE = 1


def split_messages(data: bytes) -> list[bytes]:
    """Messages in a file, segments joined with CR (blank lines and MSH start a new one)."""
    messages: list[list[bytes]] = []
    current: list[bytes] = []
    for line in re.split(rb"\r\n|\n|\r", data):
        if not line.strip():
            if current:
                messages.append(current)
                current = []
            continue
        if line.startswith(b"MSH") and current:
            messages.append(current)
            current = []
        current.append(line)
    if current:
        messages.append(current)
    return [CR.join(segs) + CR for segs in messages]


def frame(message: bytes) -> bytes:
    return VT + message + FS + CR


def _field(segment: bytes, sep: bytes, n: int) -> str:
    """Field ``n`` (1-based, HL7 numbering) of a non-MSH segment."""
    parts = segment.split(sep)
    return parts[n].decode("latin-1") if len(parts) > n else ""


def control_id(message: bytes) -> str:
    """MSH-10 (MSH-1 is the separator itself, so MSH-10 is split index 9)."""
    msh = message.split(CR, 1)[0]
    if len(msh) < 4:
        return ""
    parts = msh.split(msh[3:4])
    return parts[9].decode("latin-1") if len(parts) > 9 else ""


@dataclass
class Ack:
    code: str
    control_id: str
    text: str
    errors: list[str]

    @property
    def positive(self) -> bool:
        return self.code in POSITIVE


def parse_ack(message: bytes) -> Ack:
    segments = [s for s in re.split(rb"\r\n|\n|\r", message) if s]
    sep = segments[0][3:4] if segments and segments[0].startswith(b"MSH") else b"|"
    msa = next((s for s in segments if s.startswith(b"MSA")), b"")
    errors = [s.decode("latin-1") for s in segments if s.startswith(b"ERR")]
    return Ack(_field(msa, sep, 1), _field(msa, sep, 2), _field(msa, sep, 3), errors)


class MllpConnection:
    """One client connection; :meth:`exchange` sends a message and reads its ACK."""

    def __init__(
        self, host: str, port: int, timeout_s: float, tls: ssl.SSLContext | None = None
    ) -> None:
        self.timeout_s = timeout_s
        sock = socket.create_connection((host, port), timeout=timeout_s)
        self.sock = tls.wrap_socket(sock, server_hostname=host) if tls else sock
        self._buf = b""

    def exchange(self, message: bytes) -> bytes:
        self.sock.sendall(frame(message))
        deadline = time.monotonic() + self.timeout_s
        while True:
            start = self._buf.find(VT)
            if start >= 0:
                end = self._buf.find(FS + CR, start)
                if end >= 0:
                    ack, self._buf = self._buf[start + 1 : end], self._buf[end + 2 :]
                    return ack
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no ACK within {self.timeout_s}s")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise TimeoutError(f"no ACK within {self.timeout_s}s") from None
            if not chunk:
                raise ConnectionError("connection closed by the listener before the ACK")
            self._buf += chunk

    def close(self) -> None:
        self.sock.close()


def tls_context(ca_file: str | None, client_cert: str | None) -> ssl.SSLContext:
    """Verifying client context: the given CA (else the system's), optional client cert."""
    ctx = ssl.create_default_context(cafile=ca_file)
    if client_cert:
        ctx.load_cert_chain(client_cert)
    return ctx


def command(settings: Settings, args: argparse.Namespace) -> int:
    port = args.port or settings.mllp.port
    batches: list[tuple[str, bytes]] = []
    for name in args.files:
        try:
            data = Path(name).read_bytes()
        except OSError as exc:
            print(f"mwl-bridge: cannot read {name}: {exc.strerror}", file=sys.stderr)
            return EXIT_NEGATIVE
        msgs = split_messages(data)
        batches += [(f"{name}#{n}" if len(msgs) > 1 else name, m) for n, m in enumerate(msgs, 1)]
    if not batches:
        print("mwl-bridge: no HL7 message in the given files", file=sys.stderr)
        return EXIT_NEGATIVE
    tls = None
    if getattr(args, "tls", False) or getattr(args, "tls_ca", None):
        try:
            tls = tls_context(args.tls_ca, args.tls_client_cert)
        except (OSError, ssl.SSLError) as exc:
            print(f"mwl-bridge: cannot load TLS files: {exc}", file=sys.stderr)
            return EXIT_NEGATIVE
    try:
        conn = MllpConnection(args.host, port, args.timeout, tls)
    except OSError as exc:
        print(f"mwl-bridge: cannot connect to {args.host}:{port}: {exc}", file=sys.stderr)
        return EXIT_NEGATIVE
    failed = 0
    try:
        for label, message in batches:
            ctl = control_id(message)
            try:
                ack = parse_ack(conn.exchange(message))
            except (OSError, TimeoutError) as exc:
                print(f"{label}  MSH-10={ctl}  NO ACK: {exc}")
                return EXIT_NEGATIVE
            print(
                f"{label}  MSH-10={ctl}  MSA-1={ack.code}  MSA-2={ack.control_id}"
                + (f"  MSA-3={ack.text}" if ack.text else "")
            )
            for err in ack.errors:
                print(f"    {err}")
            if not ack.positive or ack.control_id != ctl:
                failed += 1
    finally:
        conn.close()
    print(f"{len(batches) - failed} of {len(batches)} message(s) acknowledged AA/CA")
    return EXIT_NEGATIVE if failed else 0

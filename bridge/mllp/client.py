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

The same client delivers the procedure status messages to the RIS
(``bridge.outbound.delivery``): :class:`MllpConnection` with separate connect and reply
timeouts and optional mutual TLS, and :func:`parse_ack` for whatever reply comes back
(ACK, ORR^O02, ORG^O20, OSR^Q06: MSA is read wherever it is, ERR in either layout).
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
    """What a reply says: MSA-1 (``code``), MSA-2 (``control_id``: the MSH-10 it answers),
    MSA-3, the ERR segments as received, and from the first ERR the table 0357 code and
    the field it blames (``PID-3``), and the reply's own MSH-9."""

    code: str
    control_id: str
    text: str
    errors: list[str]
    error_code: str = ""
    error_location: str = ""
    message_type: str = ""

    @property
    def positive(self) -> bool:
        return self.code in POSITIVE


def _err_detail(err: bytes, sep: bytes, comp: bytes, sub: bytes) -> tuple[str, str]:
    """(code, location) of one ERR segment. v2.5+: ERR-2 location ``SEG^seq^field``, ERR-3
    code (CWE); before v2.5: ERR-1 ``SEG^seq^field^code&text&table`` (HL7 v2.5 2.15.5)."""
    fields = err.split(sep)
    if len(fields) > 3 and fields[3]:
        code = fields[3].split(comp)[0]
        where = fields[2].split(comp) if fields[2:3] else []
    elif len(fields) > 1 and fields[1]:
        parts = fields[1].split(comp)
        code = parts[3].split(sub)[0] if len(parts) > 3 else b""
        where = parts[:3]
    else:
        return "", ""
    location = ""
    if where and where[0]:
        location = where[0].decode("latin-1")
        if len(where) > 2 and where[2]:
            location += "-" + where[2].decode("latin-1")
    return code.decode("latin-1").strip(), location


def parse_ack(message: bytes) -> Ack:
    """The acknowledgement in any reply message: the MSA segment wherever it stands (an
    ACK, or an ORR^O02 / ORG^O20 / OSR^Q06 with its order segments after it)."""
    segments = [s for s in re.split(rb"\r\n|\n|\r", message) if s]
    msh = segments[0] if segments and segments[0].startswith(b"MSH") else b""
    sep = msh[3:4] or b"|"
    encoding = msh.split(sep)[1] if msh.count(sep) > 1 else b"^~\\&"
    comp, sub = encoding[0:1] or b"^", encoding[3:4] or b"&"
    msa = next((s for s in segments if s.startswith(b"MSA")), b"")
    err_segments = [s for s in segments if s.startswith(b"ERR")]
    errors = [s.decode("latin-1") for s in err_segments]
    code, location = _err_detail(err_segments[0], sep, comp, sub) if err_segments else ("", "")
    return Ack(
        _field(msa, sep, 1),
        _field(msa, sep, 2),
        _field(msa, sep, 3),
        errors,
        error_code=code,
        error_location=location,
        message_type=_field(msh, sep, 8).replace(comp.decode("latin-1"), "^") if msh else "",
    )


class MllpConnection:
    """One client connection; :meth:`exchange` sends a message and reads its ACK.

    ``timeout_s`` bounds the wait for each reply; ``connect_timeout_s`` (default the
    same) bounds the TCP connect and the TLS handshake. Failures are ``OSError``s
    (``ssl.SSLError`` included) or ``TimeoutError``; the socket is closed on a failed
    handshake."""

    def __init__(
        self,
        host: str,
        port: int,
        timeout_s: float,
        tls: ssl.SSLContext | None = None,
        connect_timeout_s: float | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        sock = socket.create_connection((host, port), timeout=connect_timeout_s or timeout_s)
        try:
            self.sock = tls.wrap_socket(sock, server_hostname=host) if tls else sock
        except BaseException:
            sock.close()
            raise
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


def tls_context(
    ca_file: str | None, client_cert: str | None, client_key: str | None = None
) -> ssl.SSLContext:
    """Verifying client context: the given CA (else the system's), optional client cert
    (a PEM holding the key too, or with ``client_key``)."""
    ctx = ssl.create_default_context(cafile=ca_file or None)
    if client_cert:
        ctx.load_cert_chain(client_cert, client_key or None)
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

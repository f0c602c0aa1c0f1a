"""`mwl-bridge send` against a small real MLLP server on 127.0.0.1."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.mllp.client import control_id, parse_ack, split_messages
from bridge.ops.cli import main

SAMPLES = Path(__file__).parent / "samples" / "ops"


class MllpHandler(socketserver.BaseRequestHandler):
    """Answers each frame with an ACK: AE for control id BAD, nothing for SLOW, AA else.
    The ACK is written in two pieces to exercise the client's buffering."""

    def handle(self) -> None:
        buf = b""
        while True:
            try:
                chunk = self.request.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while (end := buf.find(b"\x1c\x0d")) >= 0:
                msg, buf = buf[buf.find(b"\x0b") + 1 : end], buf[end + 2 :]
                self.server.received.append(msg)  # type: ignore[attr-defined]
                ctl = control_id(msg)
                if ctl == "SLOW":
                    time.sleep(2)
                    continue
                code = "AE" if ctl == "BAD" else "AA"
                ack = f"MSH|^~\\&|MWL|RAD|RIS|HOSP|20260705||ACK^O01^ACK|A{ctl}|P|2.5\r"
                ack += f"MSA|{code}|{ctl}|{'PID-3 missing' if code == 'AE' else ''}\r"
                if code == "AE":
                    ack += "ERR||PID^1^3|101^Required field missing^HL70357|E\r"
                data = b"junk\x0b" + ack.encode() + b"\x1c\x0d"
                self.request.sendall(data[:7])
                time.sleep(0.01)
                self.request.sendall(data[7:])


@pytest.fixture
def server() -> Iterator[socketserver.ThreadingTCPServer]:
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), MllpHandler)
    srv.daemon_threads = True
    srv.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def send(srv, *argv: str) -> int:
    return main(["send", "--port", str(srv.server_address[1]), *argv])


def test_split_messages_on_blank_lines_and_msh() -> None:
    msgs = split_messages((SAMPLES / "orm_two.hl7").read_bytes())
    assert [control_id(m) for m in msgs] == ["OPS0001", "OPS0002"]
    assert all(b"\n" not in m and m.endswith(b"\r") for m in msgs)
    assert msgs[0].count(b"\r") == 6
    glued = b"MSH|^~\\&|A|B|||||ORM^O01|1|P|2.3\rPID|1\nMSH|^~\\&|A|B|||||ORM^O01|2|P|2.3\n"
    assert [control_id(m) for m in split_messages(glued)] == ["1", "2"]


def test_send_two_messages_over_one_connection(server, capsys) -> None:
    assert send(server, str(SAMPLES / "orm_two.hl7")) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("orm_two.hl7#1  MSH-10=OPS0001  MSA-1=AA  MSA-2=OPS0001")
    assert out[1].endswith("orm_two.hl7#2  MSH-10=OPS0002  MSA-1=AA  MSA-2=OPS0002")
    assert out[2] == "2 of 2 message(s) acknowledged AA/CA"
    assert [control_id(m) for m in server.received] == ["OPS0001", "OPS0002"]
    assert server.received[0].startswith(b"MSH|^~\\&|RIS|HOSP") and b"\n" not in server.received[0]


def test_negative_ack_prints_err_and_exits_1(server, tmp_path: Path, capsys) -> None:
    f = tmp_path / "m.hl7"
    f.write_bytes(b"MSH|^~\\&|RIS|HOSP|||||ORM^O01|BAD|P|2.5\rPID|1\r\r"
                  b"MSH|^~\\&|RIS|HOSP|||||ORM^O01|GOOD|P|2.5\rPID|1\r")  # fmt: skip
    assert send(server, str(f)) == 1
    out = capsys.readouterr().out
    assert "MSH-10=BAD  MSA-1=AE  MSA-2=BAD  MSA-3=PID-3 missing" in out
    assert "ERR||PID^1^3|101^Required field missing^HL70357|E" in out
    assert "MSH-10=GOOD  MSA-1=AA" in out
    assert "1 of 2 message(s) acknowledged" in out


def test_missing_ack_times_out(server, tmp_path: Path, capsys) -> None:
    f = tmp_path / "m.hl7"
    f.write_bytes(b"MSH|^~\\&|RIS|HOSP|||||ORM^O01|SLOW|P|2.5\rPID|1\r")
    t0 = time.monotonic()
    assert send(server, str(f), "--timeout", "0.3") == 1
    assert time.monotonic() - t0 < 2
    assert "NO ACK: no ACK within 0.3s" in capsys.readouterr().out


def test_connection_refused_and_unreadable_file(tmp_path: Path, capsys) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["send", "--port", str(port), str(SAMPLES / "orm_new.hl7")]) == 1
    assert "cannot connect" in capsys.readouterr().err
    assert main(["send", "--port", str(port), str(tmp_path / "none.hl7")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_parse_ack_with_other_separator() -> None:
    ack = parse_ack(b"MSH#^~\\&#X\rMSA#CA#C9#ok\r")
    assert (ack.code, ack.control_id, ack.text, ack.positive) == ("CA", "C9", "ok", True)


def test_send_over_tls_verifies_the_listener(tmp_path: Path, capsys) -> None:
    import ssl
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    class TlsServer(socketserver.ThreadingTCPServer):
        daemon_threads = True

        def get_request(self):
            sock, addr = super().get_request()
            return ctx.wrap_socket(sock, server_side=True), addr

    srv = TlsServer(("127.0.0.1", 0), MllpHandler)
    srv.received = []  # type: ignore[attr-defined]
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    try:
        port = str(srv.server_address[1])
        sample = str(SAMPLES / "orm_new.hl7")
        assert main(["send", "--port", port, "--tls", "--tls-ca", str(cert), sample]) == 0
        assert "MSA-1=AA  MSA-2=OPS0001" in capsys.readouterr().out
        # Without the CA the self-signed listener is not trusted: no message is sent.
        assert main(["send", "--port", port, "--tls", sample]) == 1
        assert "CERTIFICATE_VERIFY_FAILED" in capsys.readouterr().err
        assert len(srv.received) == 1  # type: ignore[attr-defined]
    finally:
        srv.shutdown()
        srv.server_close()

"""A proxy on 127.0.0.1 that really breaks what passes through it, for fault-injection tests.

It stands in front of one real server (Azurite, the registry, the Kubernetes API server) and forwards every
HTTP/1.1 request and answer byte for byte, until a fault armed by the test matches a request ("METHOD path",
a regular expression) and fires, the first `times` times it matches (after letting `skip` through):

    Respond(503)          the server seems overloaded: the request is answered with that status (and the
                          connection closed), never forwarded
    ResetRequest(after=K) the connection breaks mid-upload: K bytes of the request's body go through, then
                          both sides get a TCP reset
    ResetResponse(after=K) the connection breaks mid-download: K bytes of the answer's body reach the client,
                          then a TCP reset
    Corrupt(at=K)         one bit flips in transit: byte K of the answer's body reaches the client changed
    Watch(after=K, then=f) nothing breaks here: once K bytes of a matching request's body went through (K=0:
                          before the request goes on), f() runs, holding the rest until it returns: e.g. it stops
                          the server behind the proxy, or the client's own engine, mid-upload for certain

Every fault counts how often it fired (`fired`), so a test can prove its fault really happened. With
`tls=(certificate, key)` the proxy terminates TLS with that certificate and speaks TLS to the server (the
Kubernetes API server), so faults can see the requests there too. When the server behind it is down, the
proxy resets each connection it cannot forward, as a dead server's address would.

Requests are parsed (Content-Length and chunked bodies), answers are not: clients here never pipeline, so
the answer to a request is whatever the server sends between it and the next request.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from modelship import net

CHUNK = 64 * 1024


@dataclass(kw_only=True)
class Fault:
    match: str = ""  # a regular expression searched in "METHOD path"
    times: int = 1
    skip: int = 0  # matching requests let through untouched before the fault starts firing
    fired: int = field(default=0, init=False)
    seen: list[str] = field(default_factory=list, init=False)  # the requests it fired on

    def matches(self, request_line: str) -> bool:
        if self.fired >= self.times or re.search(self.match, request_line) is None:
            return False
        if self.skip > 0:
            self.skip -= 1
            return False
        return True


@dataclass(kw_only=True)
class Respond(Fault):
    status: int = 503
    reason: str = "Service Unavailable"


@dataclass(kw_only=True)
class ResetRequest(Fault):
    after: int = 0  # bytes of the request body forwarded before the reset


@dataclass(kw_only=True)
class ResetResponse(Fault):
    after: int = 0  # bytes of the answer's body delivered before the reset


@dataclass(kw_only=True)
class Corrupt(Fault):
    at: int = 0  # offset in the answer's body of the byte that is changed


@dataclass(kw_only=True)
class Watch(Fault):
    after: int = 0
    then: Callable[[], None] = lambda: None


class _Reset(Exception):
    """This connection ends now, with a TCP reset on both sides."""


def reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN: the peer sees "connection reset by peer"."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        # Wakes a thread blocked reading it (close alone would not, and the reset would wait for that thread);
        # SHUT_RD sends nothing, so the peer still sees the reset, not an orderly end.
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()


def close_in_order(sock: socket.socket) -> None:
    """FIN, then wait (briefly) for the peer to close: it reads everything we sent before it sees the end."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(5)
        while sock.recv(CHUNK):
            pass
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    def __init__(self, upstream_port: int, *, tls: tuple[str, str] | None = None, name: str = "proxy") -> None:
        self.upstream_port = upstream_port
        self.name = name
        self.port = net.free_port()
        self.faults: list[Fault] = []
        self.requests: list[str] = []  # every request line seen, in order
        self.connections = 0
        self._lock = threading.Lock()
        self._server_tls: ssl.SSLContext | None = None
        self._client_tls: ssl.SSLContext | None = None
        if tls:
            self._server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._server_tls.load_cert_chain(*tls)
            self._client_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            self._client_tls.check_hostname = False
            self._client_tls.verify_mode = ssl.CERT_NONE  # the server behind us is a test's own, on loopback
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._open: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, name=f"{name}-accept", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def arm(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def disarm(self) -> None:
        with self._lock:
            self.faults.clear()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            open_now = list(self._open)
        for sock in open_now:
            reset(sock)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(client,), name=f"{self.name}-conn", daemon=True).start()

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._open.add(sock)
        return sock

    def _fault_for(self, request_line: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(request_line):
                    fault.fired += 1
                    fault.seen.append(request_line)
                    return fault
        return None

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        answered = False  # an injected answer: the connection ends in order (FIN), so the client reads it all
        try:
            if self._server_tls is not None:
                client = self._server_tls.wrap_socket(client, server_side=True)
            self._track(client)
            reader = _Reader(client)  # not makefile(): its reference would keep reset() from closing the socket
            if self._server_tls is None and reader.peek() == b"\x16":
                return  # a TLS handshake on plain HTTP (dockerd tries HTTPS first): refused at once, as a server would
            answer = _Answer()
            while True:
                head = _read_head(reader)
                if head is None:
                    return  # the client closed the connection
                request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
                method, _, rest = request_line.partition(" ")
                target = rest.rpartition(" ")[0]
                line = f"{method} {target}"
                with self._lock:
                    self.requests.append(line)
                fault = self._fault_for(line)
                if isinstance(fault, Respond):
                    _body(reader, head, lambda _data: None)  # read it all, so the client reads our answer
                    text = f"{{\"fault\": \"{fault.status} injected by the test's proxy\"}}"
                    client.sendall(
                        f"HTTP/1.1 {fault.status} {fault.reason}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(text)}\r\nConnection: close\r\n\r\n{text}".encode()
                    )
                    answered = True
                    return
                if upstream is None:
                    upstream = self._connect()
                    threading.Thread(target=self._answers, args=(upstream, client, answer), daemon=True).start()
                answer.expect(fault if isinstance(fault, ResetResponse | Corrupt) else None)
                if isinstance(fault, Watch) and fault.after == 0:
                    fault.then()  # before the request goes on at all (a GET has no body to count)
                upstream.sendall(head)
                sent = 0

                def forward(data: bytes, fault: Fault | None = fault, upstream: socket.socket = upstream) -> None:
                    nonlocal sent
                    if isinstance(fault, ResetRequest) and sent + len(data) >= fault.after:
                        upstream.sendall(data[: max(0, fault.after - sent)])
                        raise _Reset
                    upstream.sendall(data)
                    before, sent = sent, sent + len(data)
                    if isinstance(fault, Watch) and before < fault.after <= sent:
                        fault.then()

                _body(reader, head, forward)
        except (_Reset, OSError, ssl.SSLError, ValueError):
            pass
        finally:
            if answered:
                close_in_order(client)
            else:
                reset(client)
            if upstream is not None:
                reset(upstream)

    def _connect(self) -> socket.socket:
        try:
            sock = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
        except OSError as exc:  # the server behind us is down: so is this connection
            raise _Reset from exc
        sock.settimeout(None)
        if self._client_tls is not None:
            sock = self._client_tls.wrap_socket(sock)
        return self._track(sock)

    def _answers(self, upstream: socket.socket, client: socket.socket, answer: _Answer) -> None:
        """Copy the server's answers to the client, applying the fault armed for the current answer."""
        try:
            while True:
                data = upstream.recv(CHUNK)
                if not data:
                    break
                client.sendall(answer.apply(data))
        except _ResetAfter as cut:
            with contextlib.suppress(OSError):
                client.sendall(cut.deliver)
        except (_Reset, OSError):
            pass
        finally:
            reset(client)
            reset(upstream)


class _Answer:
    """Where the current answer stands: its head (until the blank line), then body bytes counted for a fault."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.fault: Fault | None = None
        self.head = b""
        self.in_body = False
        self.body = 0

    def expect(self, fault: Fault | None) -> None:
        with self._lock:
            self.fault, self.head, self.in_body, self.body = fault, b"", False, 0

    def apply(self, data: bytes) -> bytes:
        with self._lock:
            fault = self.fault
            if fault is None:
                return data
            offset = 0
            if not self.in_body:
                self.head += data
                end = self.head.find(b"\r\n\r\n")
                if end < 0:
                    return data
                self.in_body = True
                offset = len(data) - (len(self.head) - end - 4)  # where the body starts in this piece
            body = data[offset:]
            start = self.body
            self.body += len(body)
            if isinstance(fault, Corrupt) and start <= fault.at < self.body:
                index = offset + fault.at - start
                data = data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]
                self.fault = None
            elif isinstance(fault, ResetResponse) and self.body >= fault.after:
                self.fault = None
                raise _ResetAfter(data[: offset + fault.after - start])
            return data


class _ResetAfter(_Reset):
    def __init__(self, deliver: bytes) -> None:
        super().__init__()
        self.deliver = deliver


class _Reader:
    """Buffered reads from a socket: lines (request heads, chunk sizes) and pieces of bodies."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        data = self.sock.recv(CHUNK)
        self.buffer += data
        return bool(data)

    def readline(self, limit: int) -> bytes:
        while b"\n" not in self.buffer and len(self.buffer) < limit:
            if not self._fill():
                break
        end = self.buffer.find(b"\n")
        end = min(limit, len(self.buffer)) if end < 0 else end + 1
        line, self.buffer = self.buffer[:end], self.buffer[end:]
        return line

    def peek(self) -> bytes:
        """The next byte, left in the buffer (b"" at the end)."""
        if not self.buffer:
            self._fill()
        return self.buffer[:1]

    def read1(self, size: int) -> bytes:
        if not self.buffer and not self._fill():
            return b""
        piece, self.buffer = self.buffer[:size], self.buffer[size:]
        return piece


def _read_head(reader: _Reader) -> bytes | None:
    lines = []
    while True:
        line = reader.readline(65537)
        if not line:
            return None if not lines else b"".join(lines)
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            return b"".join(lines)


def _headers(head: bytes) -> dict[str, str]:
    found = {}
    for raw in head.split(b"\r\n")[1:]:
        name, sep, value = raw.decode("latin-1").partition(":")
        if sep:
            found[name.strip().lower()] = value.strip()
    return found


def _body(reader: _Reader, head: bytes, forward: Callable[[bytes], None]) -> None:
    """Pass the request's body to `forward` as it arrives (Content-Length or chunked, raw bytes)."""
    headers = _headers(head)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = reader.readline(65537)
            if not size_line:
                raise ValueError("chunked body cut short")
            forward(size_line)
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, up to the blank line
                    trailer = reader.readline(65537)
                    forward(trailer)
                    if trailer in (b"\r\n", b"\n", b""):
                        return
            _copy(reader, size + 2, forward)  # the chunk and its CRLF
    else:
        _copy(reader, int(headers.get("content-length") or 0), forward)


def _copy(reader: _Reader, length: int, forward: Callable[[bytes], None]) -> None:
    while length > 0:
        data = reader.read1(min(CHUNK, length))
        if not data:
            raise ValueError("body cut short")
        length -= len(data)
        forward(data)

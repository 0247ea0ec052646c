"""The sshtunnel backend's relay (autopod/tunnels/relay.py): byte-exact in both directions, in order when the
client is slow, across key re-exchanges, and with half-closed clients. Against a real sshd on loopback."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import socket
import socketserver
import threading
import time

import pytest

from autopod.tunnels.relay import READ_AHEAD, ReadAheadSocket

PATTERN = os.urandom(1 << 20)


def _payload(n: int) -> bytes:
    return (PATTERN * (n // len(PATTERN) + 1))[:n]


class _Backend(socketserver.ThreadingTCPServer):
    """'GET n' sends n bytes then closes ('GET n k': the first k, then the rest once the client sends a line);
    'PUT' hashes what comes until EOF and answers the sha256."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _BackendHandler)


class _BackendHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        cmd = self.rfile.readline().split()
        if cmd[0] == b"GET":
            data = _payload(int(cmd[1]))
            if len(cmd) > 2:
                k = int(cmd[2])
                self.wfile.write(data[:k])
                self.wfile.flush()
                self.rfile.readline()
                data = data[k:]
            self.wfile.write(data)
        elif cmd[0] == b"PUT":
            h = hashlib.sha256()
            while chunk := self.rfile.read1(1 << 16):
                h.update(chunk)
            self.wfile.write(h.hexdigest().encode())


@pytest.fixture(scope="module")
def backend():
    srv = _Backend()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def forward(sshd, ssh_user_key, backend):
    """A started forwarder (the daemon's class) from 127.0.0.1:<port> to the backend; yields the port."""
    import paramiko

    from autopod.tunnels.daemon import _forwarder_class

    kt, b64 = sshd.host_key_pub.split()[:2]
    fwd = _forwarder_class()(
        ("127.0.0.1", sshd.port), ssh_username=sshd.user, ssh_pkey=paramiko.PKey.from_path(ssh_user_key),
        allow_agent=False, host_pkey_directories=[], ssh_config_file=None,
        ssh_host_key=paramiko.PKey.from_type_string(kt, base64.b64decode(b64)),
        remote_bind_address=("127.0.0.1", backend), local_bind_address=("127.0.0.1", 0),
        logger=logging.getLogger("autopod.test.fastrelay"))
    fwd.start()
    try:
        yield fwd
    finally:
        fwd.stop(force=True)


def _get(port: int, n: int, *, read_size: int = 1 << 20, pause: float = 0.0, slow_part: int | None = None) -> bytes:
    """``n`` bytes through the tunnel, read with a ``pause`` after each read. With ``slow_part``, the server
    sends that many bytes, then waits for the client to have read them all and ask for the rest, which
    it reads without pausing."""
    out = bytearray()
    with socket.socket() as s:
        if pause:  # a small receive buffer, so the relay's non-blocking sends run into a full socket
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        s.settimeout(30)
        s.connect(("127.0.0.1", port))
        s.sendall(f"GET {n} {slow_part}\n".encode() if slow_part else f"GET {n}\n".encode())
        while chunk := s.recv(read_size):
            out += chunk
            if slow_part and len(out) == slow_part:
                s.sendall(b"rest\n")
                pause = 0.0
            if pause:
                time.sleep(pause)
    return bytes(out)


def test_read_ahead_socket_keeps_recv_semantics():
    a, b = socket.socketpair()
    r = ReadAheadSocket(a.family, a.type, a.proto, fileno=a.detach())
    try:
        r.settimeout(0.2)
        b.sendall(b"0123456789")
        assert r.recv(4) == b"0123"  # read ahead: all ten bytes are in memory now
        assert r.recv(100) == b"456789"  # no more than is there, never blocks for more
        with pytest.raises(socket.timeout):
            r.recv(4)
        big = os.urandom(READ_AHEAD + 5000)
        threading.Thread(target=b.sendall, args=(big,), daemon=True).start()  # more than the socket buffers
        got = bytearray()
        while len(got) < len(big):
            got += r.recv(16 if len(got) % 3 else 40000)
        assert got == big
        b.shutdown(socket.SHUT_WR)
        assert r.recv(4) == b""
    finally:
        r.close()
        b.close()


def test_the_ssh_socket_sends_at_once_and_acks_each_read(monkeypatch):
    """Nagle off and an immediate ACK after each read: otherwise a small request or the second packet of a
    reply waits about 40 ms for a delayed ACK (sshd leaves Nagle on without a terminal)."""
    server = socket.create_server(("127.0.0.1", 0))
    calls = []
    setsockopt = socket.socket.setsockopt
    monkeypatch.setattr(ReadAheadSocket, "setsockopt",
                        lambda self, *a: calls.append(a) or setsockopt(self, *a), raising=False)
    r = ReadAheadSocket.connect(server.getsockname(), 2.0)
    peer, _ = server.accept()
    try:
        assert r.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        peer.sendall(b"reply")
        calls.clear()
        assert r.recv(2) == b"re" and r.recv(10) == b"ply"  # the second is served from memory: no read
        if hasattr(socket, "TCP_QUICKACK"):
            assert calls == [(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)]
    finally:
        r.close()
        peer.close()
        server.close()


@pytest.mark.sshd
def test_download_is_byte_exact_and_mostly_direct(forward):
    port = forward.local_bind_port
    n = 24 * (1 << 20) + 12345
    assert _get(port, n) == _payload(n)
    assert isinstance(forward._transport.sock, ReadAheadSocket)
    assert forward._transport.direct_sinks == {}  # every finished connection unregisters


@pytest.mark.sshd
def test_slow_client_gets_every_byte_in_order(forward, monkeypatch):
    """A reader slower than the link: the transport thread's sends would block, so data queues in the
    channel and the relay thread drains it; once it has, direct sends resume. Nothing overtakes anything.
    (The server holds the second half until the reader has the first: a reader that stays slow may keep
    the channel's buffer from ever emptying, and then only the queued path is taken.)"""
    from paramiko.buffered_pipe import BufferedPipe

    from autopod.tunnels import relay

    queued = []
    feed = BufferedPipe.feed
    monkeypatch.setattr(BufferedPipe, "feed", lambda self, data: (queued.append(len(data)), feed(self, data))[1])
    real_relay = relay.relay

    def small_send_buffer(sock, chan, chunk):  # so the client's socket fills up well before the SSH window
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        real_relay(sock, chan, chunk)

    monkeypatch.setattr(relay, "relay", small_send_buffer)
    n = 4 * (1 << 20) + 777
    assert _get(forward.local_bind_port, n, read_size=16384, pause=0.001, slow_part=n // 2) == _payload(n)
    assert queued  # the queued path was taken
    assert sum(queued) < n  # and so was the direct one


@pytest.mark.sshd
def test_parallel_downloads_and_uploads(forward):
    port = forward.local_bind_port
    results: dict[str, bool] = {}

    def down(i: int) -> None:
        n = (3 + i) * (1 << 20) + i
        results[f"down{i}"] = _get(port, n, read_size=7000 * (i + 1)) == _payload(n)

    def up(i: int) -> None:
        data = _payload((2 + i) * (1 << 20) + 3 * i)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"PUT\n" + data)
            s.shutdown(socket.SHUT_WR)  # half-close: the answer must still come back
            answer = s.recv(100)
        results[f"up{i}"] = answer == hashlib.sha256(data).hexdigest().encode()

    threads = [threading.Thread(target=f, args=(i,)) for i in range(3) for f in (down, up)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {k: True for k in results} and len(results) == 6


@pytest.mark.sshd
def test_key_re_exchange_during_a_download(forward, monkeypatch):
    """paramiko asks for new keys after Packetizer.REKEY_BYTES; during the exchange channel data must
    wait in the channel's buffer (a window adjust cannot be sent then) and come out in order."""
    from paramiko.packet import Packetizer

    pk = forward._transport.packetizer
    monkeypatch.setattr(Packetizer, "REKEY_BYTES", 2 * (1 << 20))  # class attribute: read on every packet
    n = 20 * (1 << 20) + 99
    before = forward._transport.H
    assert _get(forward.local_bind_port, n, read_size=50000) == _payload(n)
    assert pk is forward._transport.packetizer and forward._transport.is_active()
    assert forward._transport.H != before  # new keys were exchanged on the same connection


def test_this_paramiko_supports_the_direct_relay():
    """The pinned paramiko range must keep the internals DirectTransport hooks; if not, this says so first."""
    from autopod.tunnels import relay

    assert relay.direct_supported()


def test_without_the_internals_the_relay_falls_back_to_paramikos_transport(forward_fallback):
    port, fwd = forward_fallback
    import paramiko

    from autopod.tunnels.relay import DirectTransport

    assert type(fwd._transport) is paramiko.Transport and not isinstance(fwd._transport, DirectTransport)
    n = 3 * 1024 * 1024 + 17
    assert _get(port, n) == _payload(n)


@pytest.fixture
def forward_fallback(sshd, ssh_user_key, backend, monkeypatch):
    from autopod.tunnels import relay

    monkeypatch.setattr(relay, "direct_supported", lambda: False)
    gen = forward.__wrapped__(sshd, ssh_user_key, backend)
    fwd = next(gen)
    try:
        yield fwd.local_bind_port, fwd
    finally:
        gen.close()


@pytest.mark.sshd
def test_client_closing_as_the_server_closes_keeps_the_ssh_connection(forward):
    """A client that closes right as the response ends makes the relay half-close a channel the server is
    closing. An EOF sent after our CLOSE makes sshd drop the whole connection (every tunnel with it)."""
    port = forward.local_bind_port

    def burst(i: int) -> None:
        for _ in range(40):
            assert _get(port, 1000 + i) == _payload(1000 + i)

    threads = [threading.Thread(target=burst, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert forward._transport.is_active(), f"sshd dropped the connection: {forward._transport.saved_exception!r}"
    n = 1 << 20
    assert _get(port, n) == _payload(n)

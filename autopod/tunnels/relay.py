"""Cheaper per-byte paths for the sshtunnel backend (bench/README.md has the profile behind each one).

paramiko does its per-packet work in Python, but on a fast link most of the tunnel's CPU time went to
the kernel: thread wake-ups and context switches between paramiko's transport thread and the relay thread,
pipe writes and ``select`` calls that signal each packet, and page faults from large short-lived buffers.
The cipher (AES-GCM in OpenSSL) was under 10 %. So this module cuts system calls and thread hand-offs:

- ``ReadAheadSocket``: paramiko's Packetizer reads each packet with two ``recv`` calls (the first cipher
  block, then the rest) and, with the 0.1 s timeout paramiko sets, CPython polls before each: four system
  calls per 32 KiB packet. This socket reads up to ``READ_AHEAD`` bytes at once into one reused buffer and
  serves the small reads from memory. paramiko's ``Transport`` takes any socket-like object; this is a real
  ``socket.socket``, so ``send``, ``settimeout``, ``close`` and the rest are the usual ones.
  It also keeps small requests and replies from waiting on delayed ACKs (about 40 ms each, on most
  requests through the tunnel; ``ssh -L`` shows none): Nagle is off for what paramiko sends, and every
  read ACKs at once (``TCP_QUICKACK``), because sshd leaves Nagle on for a session without a terminal
  and holds the second packet of a reply (ComfyUI's headers, then the file of ``/view``) until the
  first is acknowledged.
- ``DirectTransport``: channel data for a relayed connection is written to the client socket by paramiko's
  transport thread itself, with a non-blocking ``send``, instead of going through the channel's buffer, a
  condition variable and a second thread. When the client cannot take a packet at once (or a key
  exchange is running), the data goes into the channel's buffer as usual and the relay thread drains it;
  the transport thread never blocks on a client.
- ``relay``: each direction waits in a blocking call (``chan.recv`` or ``sock.recv``) in its own thread.
  It never calls ``chan.fileno()``, which would make paramiko signal every packet through an OS pipe.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import paramiko
from paramiko.common import MSG_CHANNEL_DATA, cMSG_CHANNEL_WINDOW_ADJUST

READ_AHEAD = 256 * 1024
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class ReadAheadSocket(socket.socket):
    """A TCP socket whose ``recv`` reads ahead up to READ_AHEAD bytes and hands them out in later calls.

    Only for a socket read by one thread (paramiko's transport thread is its only reader). ``recv`` keeps
    its meaning: between 1 and n bytes, b"" at EOF, a timeout only when nothing is buffered.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = bytearray(READ_AHEAD)  # reused: a fresh 256 KiB object per read costs page faults
        self._rview = memoryview(self._rbuf)
        self._rpos = self._rend = 0
        self._quickack = _QUICKACK is not None and self.family in (socket.AF_INET, socket.AF_INET6)

    @classmethod
    def connect(cls, address: tuple[str, int], timeout: float) -> "ReadAheadSocket":
        plain = socket.create_connection(address, timeout=timeout)
        try:
            sock = cls(plain.family, plain.type, plain.proto, fileno=plain.detach())
        except BaseException:
            plain.close()
            raise
        sock.settimeout(timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def recv(self, n: int, flags: int = 0) -> bytes:  # type: ignore[override]
        pos, end = self._rpos, self._rend
        if pos == end:
            if flags or n >= READ_AHEAD:
                return super().recv(n, flags)
            end = self.recv_into(self._rview)  # raises socket.timeout like recv when nothing comes
            if self._quickack:  # the kernel clears it as it goes: set again after each read
                self.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            if not end:
                return b""
            pos = 0
            self._rend = end
        take = min(n, end - pos)
        self._rpos = pos + take
        return bytes(self._rview[pos:pos + take])

    def close(self) -> None:
        super().close()
        self._rpos = self._rend = 0


class _Sink:
    """Where the transport thread writes one channel's data directly (see DirectTransport)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.lock = threading.Lock()
        # True while data waits in the channel's buffer: new data must queue behind it, never overtake it.
        # The relay clears it once the buffer is empty and everything taken from it has been sent.
        self.diverted = True


def _feed_direct(chan: Any, m: Any) -> None:
    """MSG_CHANNEL_DATA in paramiko's transport thread: send to the client now if that cannot block."""
    sink = chan.transport.direct_sinks.get(chan.chanid)
    if sink is None:
        paramiko.Channel._feed(chan, m)  # not a relayed channel: paramiko's own handling
        return
    data = m.get_binary()
    with sink.lock:
        if not sink.diverted and chan.transport.clear_to_send.is_set():
            # Not during a key exchange: the window adjust below is then sent without waiting.
            try:
                sent = sink.sock.send(data, socket.MSG_DONTWAIT)
            except OSError:  # full (EAGAIN) or gone: the relay thread takes over and sees any error itself
                sent = 0
            if sent:
                _ack(chan, sent)
            if sent == len(data):
                return
            data = data[sent:]
        sink.diverted = True  # until the relay thread has sent all of this
        chan.in_buffer.feed(data)  # what paramiko's Channel._feed does; chan.recv acks it later


def _ack(chan: Any, n: int) -> None:
    """Give n bytes of window back to the server, as ``Channel.recv`` does for the bytes it returns."""
    ack = chan._check_add_window(n)
    if ack > 0:
        m = paramiko.Message()
        m.add_byte(cMSG_CHANNEL_WINDOW_ADJUST)
        m.add_int(chan.remote_chanid)
        m.add_int(ack)
        chan.transport._send_user_message(m)


def direct_supported() -> bool:
    """Whether this paramiko has the internals DirectTransport hooks (checked before each use).

    They are private, so a paramiko release may move them; then the daemon uses paramiko's own
    Transport and the relay still works, only slower.
    """
    table = getattr(paramiko.Transport, "_channel_handler_table", None)
    return (isinstance(table, dict) and table.get(MSG_CHANNEL_DATA) is getattr(paramiko.Channel, "_feed", None)
            and callable(getattr(paramiko.Channel, "_check_add_window", None))
            and callable(getattr(paramiko.Transport, "_send_user_message", None)))


class DirectTransport(paramiko.Transport):
    """paramiko's Transport with MSG_CHANNEL_DATA routed through ``_feed_direct`` (class-level table)."""

    _channel_handler_table = {**paramiko.Transport._channel_handler_table, MSG_CHANNEL_DATA: _feed_direct}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.direct_sinks: dict[int, _Sink] = {}


def relay(sock: socket.socket, chan: Any, chunk: int) -> None:
    """Copy both ways between a client socket and a paramiko channel until either side is done.

    The calling thread carries channel -> socket (the download direction; on a DirectTransport only what the
    transport thread could not send at once); a helper thread carries socket -> channel. A client that stops
    sending half-closes the channel (SSH EOF), as ``ssh -L`` does, so a reply still on its way arrives. The
    channel ends when the server closes it or the transport dies (paramiko then closes every channel, which
    ends a blocked ``chan.recv``); the socket is shut down so a blocked ``sock.recv`` returns.
    """
    sock.settimeout(None)
    sinks = getattr(chan.transport, "direct_sinks", None)
    sink = _Sink(sock)
    if sinks is not None:
        sinks[chan.chanid] = sink
    up = threading.Thread(target=_client_to_channel, args=(sock, chan, chunk), daemon=True,
                          name=f"relay-up-{chan.chanid}")
    up.start()
    try:
        while True:
            with sink.lock:
                if not chan.recv_ready():
                    sink.diverted = False
            data = chan.recv(chunk)
            if not data:
                break
            sock.sendall(data)
    except (OSError, EOFError):
        pass  # the client went away, or the channel broke: this connection only
    finally:
        if sinks is not None:
            sinks.pop(chan.chanid, None)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        chan.close()
        up.join(5)
        sock.close()


def half_close(chan: Any) -> None:
    """Send SSH EOF on ``chan`` (the client stopped sending) unless the channel is closed already.

    ``Channel.shutdown_write`` decides without the lock that orders outgoing messages. A client often
    closes just as the response ends, i.e. while paramiko handles the server's CLOSE: our EOF can then
    follow our CLOSE, and sshd drops the whole connection ("ieof packet referred to nonexistent
    channel"), every tunnel with it. paramiko marks a channel closed before it sends CLOSE, and every
    user message is sent holding ``clear_to_send_lock``; deciding and sending under that lock closes
    the window. Without those internals, fall back to ``shutdown_write``.
    """
    t = chan.transport
    if not all(hasattr(x, a) for x, a in ((t, "clear_to_send_lock"), (t, "clear_to_send"), (t, "_send_message"),
                                         (chan, "_send_eof"), (chan, "lock"))):
        chan.shutdown_write()
        return
    while t.is_active():
        t.clear_to_send.wait(0.1)
        with t.clear_to_send_lock:
            if not t.clear_to_send.is_set():
                continue  # a key exchange is running; user messages wait for it
            with chan.lock:
                m = None if chan.closed else chan._send_eof()
            if m is not None:
                t._send_message(m)
            return


def _client_to_channel(sock: socket.socket, chan: Any, chunk: int) -> None:
    try:
        while True:
            data = sock.recv(chunk)
            if not data:
                half_close(chan)
                return
            chan.sendall(data)
    except Exception:  # OSError, EOFError, paramiko.SSHException: this connection is done
        chan.close()  # ends the other direction's chan.recv too

"""A pure-Python SSH server for simulated pods, for machines without OpenSSH's sshd.

It needs the optional extra ``autopod[sim-ssh]`` (asyncssh). It does what the
simulator needs from a pod's sshd and nothing more: public-key login against the
pod's PUBLIC_KEY, local port forwarding to loopback addresses (ComfyUI), and
running a command (``pod.ssh --command``) with its standard input, all on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def available() -> bool:
    try:
        import asyncssh  # noqa: F401
    except ImportError:
        return False
    return True


class PySSHD:
    """Same surface as ``autopod.sim.sshd.LocalSSHD``: start(), stop(), port, host_key_pub, user."""

    def __init__(self, workdir: Path, authorized_keys: str, *, host_key: Path | None = None, port: int = 0,
                 env: dict[str, str] | None = None):
        self.workdir = Path(workdir)
        self.authorized_keys = authorized_keys
        self.host_key = host_key or self.workdir / "ssh_host_ed25519_key"
        self.port = port
        self.user = getpass.getuser()
        self.host_key_pub = ""
        self.env = dict(env or {})  # set in every session, like sshd's SetEnv
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server = None
        self._thread: threading.Thread | None = None
        self._connections: set = set()  # open client connections (the loop's thread only)

    def start(self) -> "PySSHD":
        import asyncssh

        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.host_key.exists():  # kept across restarts, like a pod's container disk
            key = asyncssh.generate_private_key("ssh-ed25519")
            key.write_private_key(str(self.host_key))
            self.host_key.chmod(0o600)
        host_key = asyncssh.read_private_key(str(self.host_key))
        self.host_key_pub = host_key.export_public_key().decode().strip()
        authorized = asyncssh.import_authorized_keys(self.authorized_keys)
        env = {**os.environ, **self.env}
        ready = threading.Event()
        errors: list[BaseException] = []
        connections = self._connections

        class _Server(asyncssh.SSHServer):
            def connection_made(self, conn) -> None:  # noqa: ANN001
                self.conn = conn
                connections.add(conn)

            def connection_lost(self, exc) -> None:  # noqa: ANN001
                connections.discard(self.conn)

            def begin_auth(self, username: str) -> bool:
                return True

            def connection_requested(self, dest_host, dest_port, orig_host, orig_port):  # noqa: ANN001
                return dest_host in LOOPBACK  # like a pod: forward to services on the pod only

        async def _serve() -> None:
            self._server = await asyncssh.listen(
                "127.0.0.1", self.port, server_host_keys=[host_key], authorized_client_keys=authorized,
                server_factory=_Server, process_factory=lambda p: _run_command(p, env), allow_scp=False)
            self.port = self._server.sockets[0].getsockname()[1]

        def _thread_main() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(_serve())
            except BaseException as e:  # reported to start()
                errors.append(e)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=_thread_main, name=f"pyssh-{self.workdir.name}", daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            raise errors[0]
        log.info("pure-Python sshd listening on 127.0.0.1:%d", self.port)
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        async def _close() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
            ending = list(self._connections)
            for conn in ending:  # a stopped pod ends every connection into it, and what they forward
                conn.abort()
            if ending:
                await asyncio.wait([asyncio.ensure_future(c.wait_closed()) for c in ending], timeout=5)

        try:
            asyncio.run_coroutine_threadsafe(_close(), loop).result(10)
        except Exception:  # the loop may already be gone
            pass
        loop.call_soon_threadsafe(loop.stop)
        if self._thread:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> "PySSHD":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _run_command(process, env: dict[str, str]) -> None:  # noqa: ANN001
    """Run the client's command with the local shell, like sshd would; no interactive shell."""
    command = process.command
    if not command:
        process.stderr.write("this simulated pod offers no interactive shell; pass a command\n")
        process.exit(1)
        return
    proc = await asyncio.create_subprocess_shell(
        command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env)

    async def feed() -> None:  # the client's stdin, as it comes (`ssh host cmd < file`), closed at its EOF
        try:
            while True:
                chunk = await process.stdin.read(65536)
                if not chunk:
                    break
                proc.stdin.write(chunk.encode() if isinstance(chunk, str) else chunk)
                await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            proc.stdin.close()

    feeder = asyncio.ensure_future(feed())
    out, err = await asyncio.gather(proc.stdout.read(), proc.stderr.read())
    await proc.wait()
    feeder.cancel()
    process.stdout.write(out.decode(errors="replace"))
    process.stderr.write(err.decode(errors="replace"))
    process.exit(proc.returncode or 0)

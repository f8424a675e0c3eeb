"""A ``redis-server`` process a test owns: start it on a free port, kill it, start it again.

Tests that break Redis must never touch a Redis someone else uses, so they run their own::

    with RedisServer() as redis:          # a fresh, empty, in-memory redis-server
        broker = RedisBroker(redis.url)
        ...
        redis.kill()                      # SIGKILL: every connection breaks, data is gone
        redis.start()                     # the same port again, empty

The server keeps nothing on disk (``--save "" --appendonly no``), so a restart loses every
key, as an in-memory Redis does after a crash. The methods block (a start takes a few
milliseconds); call them through :func:`asyncio.to_thread` from a running event loop.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from types import TracebackType

__all__ = ["RedisServer", "RedisServerError", "free_port"]


class RedisServerError(RuntimeError):
    """redis-server is not installed, or did not start."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _pong(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` child process on ``host``:``port`` (``port=0``: a free one,
    chosen at the first :meth:`start` and kept for later starts)."""

    def __init__(self, port: int = 0, *, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10) -> None:
        """Start the server and wait until it answers PING. Raises
        :class:`RedisServerError` if redis-server is missing or does not come up."""
        if self.running:
            return
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisServerError(
                "redis-server is not installed (Debian: apt-get install redis-server)"
            )
        attempts = 3 if self.port == 0 else 1
        for _ in range(attempts):
            port = self.port or free_port(self.host)
            process = subprocess.Popen(
                [binary, "--port", str(port), "--bind", self.host, "--save", "",
                 "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            deadline = time.monotonic() + timeout
            while process.poll() is None and time.monotonic() < deadline:
                if _pong(self.host, port):
                    self._process, self.port = process, port
                    return
                time.sleep(0.02)
            _reap(process)  # the port was taken meanwhile, or the server hung
        raise RedisServerError(f"redis-server did not start on {self.host}:{self.port or '?'}")

    def kill(self) -> None:
        """SIGKILL the server (as a crash would) and wait for it to be gone."""
        process, self._process = self._process, None
        if process is not None:
            _reap(process)

    def restart(self, timeout: float = 10) -> None:
        """Kill, then start again on the same port: an empty Redis."""
        self.kill()
        self.start(timeout)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


def _reap(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)

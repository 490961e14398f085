"""A TCP relay from the host's loopback into a lab namespace, for the demo's status page.

The lab has no route to the host and must not get one, so the page is reached the other way
round: this process listens on ``127.0.0.1:<port>`` in the host's namespace and, for each
connection, opens a socket *inside* the appliance's namespace (one thread moved there with
``setns``, the rest of the process stays on the host) and copies bytes both ways. TLS passes
through untouched: the browser talks to the page's own certificate.
"""

from __future__ import annotations

import contextlib
import os
import queue
import selectors
import socket
import threading
from typing import Any

CLONE_NEWNET = 0x40000000
MAX_CONNECTIONS = 64
IDLE_S = 300.0


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "setns"):
            os.setns(fd, CLONE_NEWNET)
        else:  # Python 3.11: through libc
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


class NetnsConnector(threading.Thread):
    """A thread that lives in the namespace and makes connected sockets there on request."""

    def __init__(self, netns: str) -> None:
        super().__init__(daemon=True, name=f"connector-{netns}")
        self.path = f"/run/netns/{netns}"
        self._jobs: queue.Queue[tuple[tuple[str, int], queue.Queue[Any]] | None] = queue.Queue()
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            _setns(self.path)  # this thread only: a thread's network namespace is its own
        except OSError as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            target, answer = job
            try:
                answer.put(socket.create_connection(target, timeout=5))
            except OSError as e:
                answer.put(e)

    def wait_ready(self) -> None:
        self._ready.wait(5)
        if self._error is not None:
            raise self._error

    def connect(self, target: tuple[str, int]) -> socket.socket:
        answer: queue.Queue[Any] = queue.Queue()
        self._jobs.put((target, answer))
        got = answer.get(timeout=10)
        if isinstance(got, BaseException):
            raise got
        return got

    def close(self) -> None:
        self._jobs.put(None)


class Relay:
    """``127.0.0.1:port`` on the host -> `target` inside namespace `netns`."""

    def __init__(self, netns: str, target: tuple[str, int], port: int = 0) -> None:
        self.connector = NetnsConnector(netns)
        self.connector.start()
        self.connector.wait_ready()
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = self.listener.getsockname()[1]
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="relay")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        self.listener.settimeout(0.5)
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                client.close()
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            try:
                upstream = self.connector.connect(self.target)
            except OSError:
                return
            with upstream:
                _pump(client, upstream)
        finally:
            client.close()
            self._slots.release()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        self.connector.close()
        self._thread.join(2)


def _pump(a: socket.socket, b: socket.socket) -> None:
    sel = selectors.DefaultSelector()
    a.setblocking(False)
    b.setblocking(False)
    sel.register(a, selectors.EVENT_READ, b)
    sel.register(b, selectors.EVENT_READ, a)
    try:
        while True:
            events = sel.select(IDLE_S)
            if not events:
                return
            for key, _ in events:
                src: socket.socket = key.fileobj  # type: ignore[assignment]
                dst: socket.socket = key.data
                try:
                    data = src.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                dst.setblocking(True)
                try:
                    dst.sendall(data)
                except OSError:
                    return
                finally:
                    dst.setblocking(False)
    finally:
        sel.close()

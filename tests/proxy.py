"""A TCP proxy for fault tests: put it between a client and the real node and switch what the
"network" does at runtime.

    proxy = FaultProxy("127.0.0.1", 9200)
    client = make_client(ConnectionSettings(url=proxy.url), retries=False)
    proxy.refuse()       # the node is gone: connections are refused, open ones are reset
    proxy.drop()         # connections are accepted and reset at once (open ones too)
    proxy.stall()        # accepted, read and counted, never answered (a frozen node)
    proxy.delay(0.5)     # every chunk the client sends waits 0.5 s before it is forwarded
    proxy.pass_through() # back to normal, same port
    proxy.close()

Plain TCP, so it speaks whatever the node speaks (HTTP only: TLS would go through but cannot be
inspected, and ``held_requests`` counts HTTP request lines).
"""

from __future__ import annotations

import enum
import re
import select
import socket
import struct
import threading
import time

_REQUEST_LINE = re.compile(rb"(?:GET|POST|PUT|HEAD|DELETE) /[^ ]* HTTP/1\.[01]\r\n")
_POLL_S = 0.02  # how often a pump looks at the mode: a switch takes effect within this


class Mode(enum.Enum):
    PASS = "pass"
    DELAY = "delay"
    STALL = "stall"
    DROP = "drop"
    REFUSE = "refuse"


class FaultProxy:
    """A proxy on 127.0.0.1 (a free port unless ``port`` is given) in front of ``target_host:target_port``.

    Counters: ``connections`` accepted, ``resets`` (connections cut by drop/refuse),
    ``held_requests`` (HTTP requests received while stalled)."""

    def __init__(self, target_host: str, target_port: int, *, port: int = 0):
        self.target = (target_host, target_port)
        self.connections = 0
        self.resets = 0
        self.held_requests = 0
        self._mode = Mode.PASS
        self._delay_s = 0.0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._server: socket.socket | None = None
        self.port = port
        self._listen()

    # ---- switching ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mode(self) -> Mode:
        return self._mode

    def pass_through(self) -> None:
        self._set(Mode.PASS)

    def delay(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the delay must be >= 0 seconds")
        self._delay_s = seconds
        self._set(Mode.DELAY)

    def stall(self) -> None:
        self._set(Mode.STALL)

    def drop(self) -> None:
        self._set(Mode.DROP)

    def refuse(self) -> None:
        self._set(Mode.REFUSE)

    def _set(self, mode: Mode) -> None:
        with self._lock:
            if self._closing.is_set():
                raise RuntimeError("the proxy is closed")
            self._mode = mode
            server = self._server
            if mode is Mode.REFUSE and server is not None:
                self._server = None
                self._sockets.discard(server)
        if mode is Mode.REFUSE and server is not None:
            _close_listener(server)  # connect() now gets ECONNREFUSED; the pumps reset open connections
        elif mode is not Mode.REFUSE and server is None:
            self._listen()

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            sockets, self._sockets, self._server = list(self._sockets), set(), None
        for s in sockets:
            _close_listener(s)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- plumbing -----------------------------------------------------------------------------
    def _listen(self) -> None:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))  # the same port after a refuse: the client's URL stays valid
        server.listen(64)
        self.port = server.getsockname()[1]
        with self._lock:
            self._server = server
            self._sockets.add(server)
        threading.Thread(target=self._accept, args=(server,), daemon=True, name=f"proxy-accept-{self.port}").start()

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._sockets.add(s)

    def _forget(self, s: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(s)

    def _accept(self, server: socket.socket) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = server.accept()
            except OSError:  # closed: refuse() or close()
                return
            with self._lock:
                self.connections += 1
            self._track(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True, name="proxy-conn").start()

    def _reset(self, *sockets: socket.socket) -> None:
        """Close with RST (SO_LINGER 0), as a dead peer's kernel would answer."""
        for s in sockets:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass
            self._forget(s)
        with self._lock:
            self.resets += 1

    def _serve(self, conn: socket.socket) -> None:
        mode = self._mode
        if mode in (Mode.DROP, Mode.REFUSE):
            self._reset(conn)
            return
        if mode is Mode.STALL:
            self._hold(conn, b"")
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            self._reset(conn)
            return
        upstream.settimeout(None)
        self._track(upstream)
        threading.Thread(target=self._pump, args=(upstream, conn, False), daemon=True, name="proxy-pump").start()
        self._pump(conn, upstream, True)

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while not self._closing.is_set():
                mode = self._mode
                if mode in (Mode.DROP, Mode.REFUSE):
                    self._reset(src, dst)
                    return
                if mode is Mode.STALL:
                    if from_client:
                        self._hold(src, b"")
                    return  # the node's side: nothing more reaches the client
                ready, _, _ = select.select([src], [], [], _POLL_S)
                if not ready:
                    continue
                data = src.recv(65536)
                if not data:
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                mode = self._mode
                if mode is Mode.STALL:  # stalled while this request was on its way: hold it too
                    if from_client:
                        self._hold(src, data)
                    return
                if mode in (Mode.DROP, Mode.REFUSE):
                    self._reset(src, dst)
                    return
                if mode is Mode.DELAY and from_client:
                    time.sleep(self._delay_s)
                dst.sendall(data)
        except (OSError, ValueError):  # the other pump or close() shut the socket
            return

    def _hold(self, conn: socket.socket, pending: bytes) -> None:
        """Read what the client sends and count its requests; answer nothing until it hangs up
        (or the proxy is switched to drop/refuse, which resets it)."""
        buffer = pending
        counted = 0
        try:
            while not self._closing.is_set():
                found = len(_REQUEST_LINE.findall(buffer))
                if found > counted:
                    with self._lock:
                        self.held_requests += found - counted
                    counted = found
                if self._mode in (Mode.DROP, Mode.REFUSE):
                    self._reset(conn)
                    return
                ready, _, _ = select.select([conn], [], [], _POLL_S)
                if ready:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
        except (OSError, ValueError):  # the other pump or close() shut the socket
            return


def _close_listener(s: socket.socket) -> None:
    """Close ``s`` for good: a bare close() leaves a socket that another thread is blocked on in
    accept() (or recv()) listening until that call returns; shutdown() wakes it first."""
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass

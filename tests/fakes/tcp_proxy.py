"""A TCP proxy on 127.0.0.1 that forwards to a real server and, once it has seen a given number of requests
matching a pattern, runs a callback (for example: stop Azurite) and stops accepting connections. It lets a test
cut the storage endpoint off in the middle of a publish, deterministically."""
from __future__ import annotations

import re
import socket
import threading
from typing import Callable


class CuttingProxy:
    def __init__(self, upstream_port: int, pattern: bytes, after: int, on_cut: Callable[[], None]):
        self.upstream_port = upstream_port
        self.pattern = re.compile(pattern)
        self.after = after
        self.on_cut = on_cut
        self.seen = 0
        self.cut = threading.Event()
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.cut.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        except OSError:
            client.close()
            return
        threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()
        self._pipe(client, upstream, True)

    def _pipe(self, source: socket.socket, sink: socket.socket, inspect: bool) -> None:
        try:
            while not self.cut.is_set():
                data = source.recv(65536)
                if not data:
                    break
                if inspect and self.pattern.search(data):
                    with self._lock:
                        self.seen += 1
                        if self.seen > self.after and not self.cut.is_set():
                            self._cut()
                            break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.close()
                except OSError:
                    pass

    def _cut(self) -> None:
        self.cut.set()
        self._listener.close()
        self.on_cut()

    def close(self) -> None:
        self.cut.set()
        self._listener.close()

"""A tiny HTTP/1.1 upload sink: reads every body byte (Content-Length or chunked), then answers
``{"received": N}``. The origin nginx proxies /upload here unbuffered, so an upload through a proxy
only completes once the whole body has crossed it. Run: python -m bench.sink PORT
"""

from __future__ import annotations

import json
import socket
import socketserver
import sys

_RECV = 1 << 20


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.scratch = memoryview(bytearray(_RECV))

    def _fill(self) -> None:
        data = self.sock.recv(_RECV)
        if not data:
            raise EOFError
        self.buf += data

    def read_until(self, sep: bytes) -> bytes:
        while (i := self.buf.find(sep)) < 0:
            if len(self.buf) > 65536:
                raise ValueError("head too large")
            self._fill()
        out = bytes(self.buf[:i])
        del self.buf[: i + len(sep)]
        return out

    def skip(self, n: int) -> None:
        """Consume and discard exactly n body bytes, never reading past them."""
        take = min(n, len(self.buf))
        del self.buf[:take]
        n -= take
        while n:
            got = self.sock.recv_into(self.scratch, min(n, _RECV))
            if not got:
                raise EOFError
            n -= got

    def read_chunked(self) -> int:
        total = 0
        while True:
            size = int(self.read_until(b"\r\n").split(b";")[0].strip(), 16)
            if size == 0:
                while self.read_until(b"\r\n"):  # trailers up to the empty line
                    pass
                return total
            self.skip(size)
            total += size
            if self.read_until(b"\r\n"):
                raise ValueError("chunk not followed by CRLF")


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        conn = _Conn(self.request)
        try:
            while True:
                head = conn.read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
                if headers.get("expect", "").lower() == "100-continue":
                    self.request.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    received = conn.read_chunked()
                else:
                    received = int(headers.get("content-length", "0"))
                    conn.skip(received)
                body = json.dumps({"received": received}).encode()
                self.request.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                if headers.get("connection", "").lower() == "close":
                    return
        except (EOFError, ConnectionError):
            return


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main() -> None:
    with _Server(("127.0.0.1", int(sys.argv[1])), _Handler) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()

"""One HTTP/1.1 exchange on a Unix socket, read with asyncio's streams: the front's way to its
children (llama-server, llama-cpp-python workers). A streamed answer is one small chunk per token;
passing each one through a general HTTP client's state machines cost the front more CPU than
the tokens themselves, on a machine whose every core decodes (measured in bench/serving.py).

One connection per exchange (`Connection: close`): llama-server closes kept-alive connections on
its own terms, and a request sent as it closes one is lost. A Unix-socket connect costs
microseconds."""

import asyncio

CONNECT_TIMEOUT_S = 5.0
# A header line or a chunk-size line longer than this is not from our children.
_LINE_LIMIT = 1 << 20
_READ_SIZE = 1 << 16
# Hop-by-hop headers (RFC 9110 7.6.1): they describe one connection, never passed on.
HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
              b"proxy-connection"}
# Set here, not copied from the client's request.
_SET_HERE = HOP_BY_HOP | {b"host", b"content-length", b"expect"}


class BackendError(Exception):
    """The child closed the connection or answered something that is not HTTP/1.1."""


# What an exchange raises when the child is not listening, is slow, or answers badly.
UNREACHABLE = (OSError, asyncio.TimeoutError, BackendError)


class Answer:
    """Status and headers, read; the body, read on demand (`chunks()` as it arrives, or `read()`)."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, has_body: bool):
        self.status, self.headers = status, headers
        self._reader, self._writer = reader, writer
        fields = {name.lower(): value for name, value in headers}
        if not has_body:
            self._framing: str | int = 0
        elif b"chunked" in fields.get(b"transfer-encoding", b"").lower():
            self._framing = "chunked"
        elif b"content-length" in fields:
            self._framing = int(fields[b"content-length"])
        else:
            self._framing = "close"

    async def chunks(self):
        """The body's pieces as the child sends them (chunked framing removed)."""
        reader = self._reader
        try:
            if self._framing == "chunked":
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
                    if size == 0:
                        while await reader.readuntil(b"\r\n") != b"\r\n":
                            pass  # trailers
                        return
                    yield (await reader.readexactly(size + 2))[:-2]
            elif self._framing == "close":
                while piece := await reader.read(_READ_SIZE):
                    yield piece
            else:
                remaining = self._framing
                while remaining:
                    piece = await reader.read(min(remaining, _READ_SIZE))
                    if not piece:
                        raise BackendError(f"the answer ended {remaining} bytes short")
                    remaining -= len(piece)
                    yield piece
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as error:
            raise BackendError(f"malformed or cut answer body: {error}") from error

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.chunks()])

    def close(self) -> None:
        """Closing the connection mid-answer is how a generation is cancelled."""
        self._writer.close()


async def exchange(socket_path: str, method: str, target: str, headers: list[tuple[bytes, bytes]],
                   body: bytes = b"") -> Answer:
    """Send one request; return once the status and headers are in. The caller closes the Answer."""
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(socket_path, limit=_LINE_LIMIT),
                                            CONNECT_TIMEOUT_S)
    try:
        head = [f"{method} {target} HTTP/1.1".encode("latin-1"), b"host: engine", b"connection: close",
                b"content-length: " + str(len(body)).encode()]
        head += [name + b": " + value for name, value in headers if name.lower() not in _SET_HERE]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as error:
            raise BackendError(f"no answer from {socket_path}: {error}") from error
        status_line, *lines = raw[:-4].split(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise BackendError(f"not an HTTP/1.x status line from {socket_path}: {status_line[:80]!r}")
        status = int(parts[1])
        fields = []
        for line in lines:
            name, _, value = line.partition(b":")
            fields.append((name.strip(), value.strip()))
        has_body = method != "HEAD" and status >= 200 and status not in (204, 304)
        return Answer(status, fields, reader, writer, has_body)
    except BaseException:
        writer.close()
        raise


async def fetch(socket_path: str, method: str, target: str, headers: list[tuple[bytes, bytes]],
                body: bytes = b"", timeout: float | None = None) -> tuple[int, bytes]:
    """A whole exchange: status and body."""
    async def whole():
        answer = await exchange(socket_path, method, target, headers, body)
        try:
            return answer.status, await answer.read()
        finally:
            answer.close()

    return await asyncio.wait_for(whole(), timeout)

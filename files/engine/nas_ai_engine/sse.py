"""The `data:` payloads of a server-sent event stream, read incrementally: the engine's guard sees
its answer in whatever pieces the ASGI server sends, the benchmark and the load tests in whatever
pieces the network delivers, and a piece may end anywhere, even inside a line."""

DONE = "[DONE]"  # OpenAI-style streams end with it; it is no chunk


class DataParser:
    """Fed bytes, returns each complete `data:` payload (stripped, as text).

    One payload per `data:` line, not per event: OpenAI-compatible servers put each chunk's JSON
    on one line, and a caller given lines without their blank separators (requests' iter_lines)
    still gets every chunk. Lines end with LF, CRLF or CR. `[DONE]` is not returned: `done` tells."""

    def __init__(self):
        self._unfinished = b""  # a line whose end has not arrived yet
        self.done = False

    def feed(self, data: bytes) -> list[str]:
        lines = (self._unfinished + data).splitlines(keepends=True)
        self._unfinished = lines.pop() if lines and not lines[-1].endswith((b"\n", b"\r")) else b""
        payloads = []
        for line in lines:
            # Blank separators, comments (": ping"), event names and ids carry no chunk. A CRLF
            # cut between two feeds leaves a lone LF: a blank line, skipped here too.
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip().decode(errors="replace")
            if payload == DONE:
                self.done = True
            else:
                payloads.append(payload)
        return payloads

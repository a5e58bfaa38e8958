"""Figures of one LLM request as a person feels them, from its server-sent events.

Pure functions: fed (arrival time, line) pairs, so a recorded stream gives the same figures.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass

from nas_ai_engine.sse import DataParser


@dataclass(frozen=True)
class StreamMetrics:
    ttft_s: float | None        # request sent -> first chunk that carries text
    total_s: float              # request sent -> end of the stream
    output_tokens: int
    text: str

    @property
    def tokens_per_second(self) -> float | None:
        """Generation speed after the first token: what the reader sees scroll."""
        if self.ttft_s is None or self.output_tokens < 2 or self.total_s <= self.ttft_s:
            return None
        return (self.output_tokens - 1) / (self.total_s - self.ttft_s)

    @property
    def inter_token_latency_s(self) -> float | None:
        speed = self.tokens_per_second
        return None if not speed else 1 / speed


class StreamError(ValueError):
    pass


def _chunk_text(chunk: dict) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return delta.get("content") or ""
    return choice.get("text") or ""  # /v1/completions


def measure(lines: Iterable[tuple[float, bytes | str]], sent_at: float) -> StreamMetrics:
    """Figures of an SSE stream of chat or text completion chunks.

    Tokens are the server's count (`usage.completion_tokens`) when it sends one, else the number
    of chunks that carried text (llama.cpp servers send one token per chunk).
    """
    ttft, end, chunks, usage_tokens, text = None, sent_at, 0, None, []
    events = DataParser()
    for arrived, raw in lines:
        end = arrived
        # Each line comes whole, without its end: given back, the parser takes it at once.
        for data in events.feed((raw.encode() if isinstance(raw, str) else raw) + b"\n"):
            try:
                chunk = json.loads(data)
            except ValueError:
                raise StreamError(f"a stream chunk is not JSON: {data[:80]!r}") from None
            if "error" in chunk:
                raise StreamError(f"the server sent an error mid-stream: {chunk['error']}")
            piece = _chunk_text(chunk)
            if piece:
                chunks += 1
                text.append(piece)
                if ttft is None:
                    ttft = arrived - sent_at
            if chunk.get("usage"):
                usage_tokens = chunk["usage"].get("completion_tokens")
        if events.done:
            break
    if not events.done:
        raise StreamError("the stream ended without [DONE]")
    return StreamMetrics(ttft_s=ttft, total_s=end - sent_at,
                         output_tokens=usage_tokens if usage_tokens is not None else chunks,
                         text="".join(text))

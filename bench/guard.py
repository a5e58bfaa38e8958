"""What the engine's guard adds to each request, in microseconds: the allow-list, the key check,
reading and parsing the body, the bounds, the JSON depth and surrogate checks, the grammar check
and the metrics, against the same request passed straight to the same stand-in engine.

    python -m bench.guard [--requests 3000]

Prints p50 and p99 per request shape. Pure CPU on this machine: no lab needed.
"""

import argparse
import asyncio
import json
import statistics
import time

from nas_ai_engine import bounds
from nas_ai_engine.guard import Guard

KEY = "bench-backend-key"
CHAT = {"model": "m", "max_tokens": 128, "temperature": 0.7,
        "messages": [{"role": "system", "content": "You are a helpful assistant. " * 10}]
        + [{"role": role, "content": "A question about the NAS and its disks, and an answer. " * 8}
           for role in ("user", "assistant") * 4] + [{"role": "user", "content": "And now? \U0001F600"}]}
SHAPES = {
    "chat, 10 messages (~4 KB)": CHAT,
    "chat + logit_bias (50) + logprobs": {**CHAT, "logit_bias": {str(t): -5 for t in range(50)},
                                          "logprobs": True, "top_logprobs": 5},
    "completion + JSON grammar": {"prompt": "Name three colours as JSON:", "max_tokens": 64, "grammar": (
        'root ::= "{" ws "\\"colours\\":" ws "[" ws str ("," ws str)* "]" ws "}"\n'
        'str ::= "\\"" [a-z]+ "\\""\nws ::= [ \\t\\n]*\n')},
}


async def _engine(scope, receive, send):
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"usage": {"prompt_tokens": 1, "completion_tokens": 1}}'})


async def _one(app, path: str, body: bytes) -> float:
    scope = {"type": "http", "method": "POST", "path": path,
             "headers": [(b"authorization", f"Bearer {KEY}".encode())]}
    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        pass

    started = time.perf_counter()
    await app(scope, receive, send)
    return (time.perf_counter() - started) * 1e6


async def _series(app, path: str, body: bytes, requests: int) -> list[float]:
    return [await _one(app, path, body) for _ in range(requests)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    guard = Guard(_engine, {}, KEY, bounds.Limits(max_tokens=2048, max_logprobs=20, max_logit_bias=300), 1 << 20)
    print(f"{'request':38} {'bytes':>6} {'guard p50 µs':>13} {'p99':>7} {'bare p50 µs':>12} {'added p50 µs':>13}")
    for name, request in SHAPES.items():
        path = "/v1/completions" if "prompt" in request else "/v1/chat/completions"
        body = json.dumps(request).encode()
        guarded = asyncio.run(_series(guard, path, body, args.requests))
        bare = asyncio.run(_series(_engine, path, body, args.requests))
        p50, p99 = statistics.median(guarded), statistics.quantiles(guarded, n=100)[98]
        print(f"{name:38} {len(body):6d} {p50:13.1f} {p99:7.1f} {statistics.median(bare):12.1f} "
              f"{p50 - statistics.median(bare):13.1f}")


if __name__ == "__main__":
    main()

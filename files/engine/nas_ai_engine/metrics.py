"""The engine's Prometheus metrics, measured where every client's request passes: in the guard,
and where a request waits for the engine (llama-cpp-python's lock, or a ticket for a llama-server
slot). llama-cpp-python's server exports none of its own; llama-server's counters are appended
to these (llamacpp:*)."""

import contextvars
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

REGISTRY = CollectorRegistry()
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 30, 60, 120, 300)

REQUESTS = Counter("nas_ai_engine_requests", "Requests by endpoint and HTTP status",
                   ["endpoint", "status"], registry=REGISTRY)
DURATION = Histogram("nas_ai_engine_request_duration_seconds", "Arrival to the last byte",
                     ["endpoint"], buckets=_LATENCY_BUCKETS, registry=REGISTRY)
TIME_TO_FIRST_TOKEN = Histogram("nas_ai_engine_time_to_first_token_seconds",
                                "Arrival to the first chunk with text (streamed requests)",
                                ["endpoint"], buckets=_LATENCY_BUCKETS, registry=REGISTRY)
QUEUE_WAIT = Histogram("nas_ai_engine_queue_wait_seconds",
                       "Arrival to the engine taking the request (a free slot, or llama-cpp-python's lock)",
                       buckets=_LATENCY_BUCKETS, registry=REGISTRY)
PROMPT_TOKENS = Counter("nas_ai_engine_prompt_tokens",
                        "Prompt tokens by whether a slot's cache held them (cached=true) or they were read "
                        "(false), from llama-server's timings; llama-cpp-python's all count as read (its "
                        "streams report none)", ["cached"], registry=REGISTRY)
for _cached in ("true", "false"):  # both series exist from the start: a hit ratio is never empty
    PROMPT_TOKENS.labels(_cached)


def prompt_tokens_in(lines) -> dict[str, float]:
    """PROMPT_TOKENS' series ({"true": cached, "false": read}) in an engine's /metrics text lines."""
    return {line.split('cached="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in lines if line.startswith("nas_ai_engine_prompt_tokens_total{")}


GENERATED_TOKENS = Counter("nas_ai_engine_generated_tokens", "Tokens generated", registry=REGISTRY)
IN_FLIGHT = Gauge("nas_ai_engine_requests_in_flight", "Generation requests being served or waiting",
                  registry=REGISTRY)
WAITING = Gauge("nas_ai_engine_requests_waiting", "Requests waiting for a slot or the engine's lock",
                registry=REGISTRY)
MODEL = Info("nas_ai_engine_model", "The served model and the engine serving it", registry=REGISTRY)

# When the current request arrived, for the queue wait measured at the lock.
ARRIVAL: contextvars.ContextVar[float] = contextvars.ContextVar("arrival")


def time_the_lock(server_app) -> None:
    """Wrap llama-cpp-python's lock acquisition (`get_llama_proxy`, looked up by name on each
    completion) to measure how long each request waited for the engine."""
    original = server_app.get_llama_proxy

    async def timed_get_llama_proxy():
        inner = original()
        WAITING.inc()
        try:
            proxy = await inner.__anext__()
        finally:
            WAITING.dec()
        arrival = ARRIVAL.get(None)
        if arrival is not None:
            QUEUE_WAIT.observe(time.monotonic() - arrival)
        try:
            yield proxy
        finally:
            await inner.aclose()  # releases the engine's locks

    server_app.get_llama_proxy = timed_get_llama_proxy
SWAPS = Counter("nas_ai_engine_model_swaps", "Model swaps by result: ok, probe_failed (the old model "
                "serves on), rolled_back (the new one crashed or failed within the rollback window)",
                ["result"], registry=REGISTRY)

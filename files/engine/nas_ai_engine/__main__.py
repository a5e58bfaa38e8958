"""`python -m nas_ai_engine serve|wait-ready|smoke`: the engine process, its readiness probe and
the inference that proves a new build before it goes live."""

import argparse
import json
import sys
import time

from nas_ai_engine import readiness


def _load(config_path: str) -> dict:
    with open(config_path) as config_file:
        return json.load(config_file)


def serve(config: dict) -> None:
    from nas_ai_engine import bounds, metrics
    from nas_ai_engine.guard import Guard

    model, server = config["model"], config["server"]
    metrics.MODEL.info({"model": model["alias"], "sha256": model["sha256"], "server": server})
    info = {"status": "ok", "model": model["alias"], "sha256": model["sha256"], "server": server}

    limits = config["guard"]

    def guard(app, extra_metrics=None):
        return Guard(app, info, config["api_key"], bounds.Limits(
            max_tokens=limits["max_tokens"], max_logprobs=limits["max_logprobs"],
            max_logit_bias=limits["max_logit_bias"], default_max_tokens=limits["default_max_tokens"]),
            limits["max_body_bytes"], extra_metrics)

    if server == "llama-server" or config.get("workers", 1) > 1:
        import asyncio

        from nas_ai_engine import native
        front = native.serve if server == "llama-server" else native.serve_workers
        asyncio.run(front(config, guard))
    else:
        _serve_llama_cpp_python(config, guard)


def worker(config: dict, index: int) -> None:
    """One llama-cpp-python worker on its socket, with its share of the threads."""
    from nas_ai_engine import native

    threads = max(1, config["model"]["n_threads"] // config["workers"])
    config = dict(config, model=dict(config["model"], n_threads=threads))
    _serve_llama_cpp_python(config, None, uds=native.worker_socket(config, index))


def _serve_llama_cpp_python(config: dict, guard, uds: str | None = None) -> None:
    import uvicorn
    from llama_cpp.server import app as server_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    from nas_ai_engine import metrics

    model = config["model"]
    server_settings = ServerSettings(
        host=config["host"], port=config["port"], api_key=config["api_key"],
        # The default (true) ends a stream early whenever another request waits: a second user
        # would cut off the first.
        interrupt_requests=False,
    )
    model_settings = ModelSettings(
        model=model["path"], model_alias=model["alias"], n_ctx=model["n_ctx"],
        n_threads=model["n_threads"], n_threads_batch=model["n_threads"], n_batch=model["n_batch"],
        # Weights stay mmap'd page cache, counted against the slice's MemoryMax; mlock would pin
        # them beyond the reach of reclaim and needs LimitMEMLOCK.
        use_mlock=False, verbose=False,
    )
    app = server_app.create_app(server_settings=server_settings, model_settings=[model_settings])
    metrics.time_the_lock(server_app)
    # Warm-up before the port opens: the first request does not pay for page-ins and graph setup.
    started = time.monotonic()
    server_app._llama_proxy().create_completion("Hello", max_tokens=1)
    print(f"nas_ai_engine: model {model['alias']} ({model['sha256'][:12]}) warm in "
          f"{time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    if uds:  # a worker behind the front, which guards and measures
        uvicorn.run(app, uds=uds, log_level="warning", access_log=False)
    else:
        from nas_ai_engine.native import KEEP_ALIVE_S
        uvicorn.run(guard(app), host=config["host"], port=config["port"], log_level="warning", access_log=False,
                    timeout_keep_alive=KEEP_ALIVE_S)


def wait_ready(config: dict, timeout: float) -> None:
    """Exit 0 once /health answers 200 (the unit becomes active), 1 after `timeout` seconds."""
    host = config["host"]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{config['port']}/health"
    if not readiness.ready_within(lambda: readiness.answers_200(url), timeout, interval=0.5):
        sys.exit(f"nas_ai_engine: {url} did not answer within {timeout:.0f} s")


def smoke(model_path: str) -> None:
    """A real inference with this build: a build that faults or yields no token fails here."""
    from llama_cpp import Llama

    llm = Llama(model_path=model_path, n_ctx=256, n_threads=1, verbose=False)
    result = llm.create_completion("The capital of France is", max_tokens=4, temperature=0)
    tokens = result["usage"]["completion_tokens"]
    if tokens < 1:
        sys.exit("nas_ai_engine: smoke inference produced no token")
    print(f"nas_ai_engine: smoke inference ok: {result['choices'][0]['text']!r}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="nas_ai_engine")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("serve", "wait-ready", "worker"):
        command = commands.add_parser(name)
        command.add_argument("--config", required=True)
        command.add_argument("--timeout", type=float, default=300)
        command.add_argument("--index", type=int, default=0)
    smoke_command = commands.add_parser("smoke")
    smoke_command.add_argument("model_path")
    smoke_command.add_argument("--llama-server", help="also prove this llama-server binary")
    args = parser.parse_args()
    if args.command == "smoke":
        smoke(args.model_path)
        if args.llama_server:
            from nas_ai_engine import native
            native.smoke(args.llama_server, args.model_path)
    elif args.command == "serve":
        serve(dict(_load(args.config), config_path=args.config))
    elif args.command == "worker":
        worker(_load(args.config), args.index)
    else:
        wait_ready(_load(args.config), args.timeout)


if __name__ == "__main__":
    main()

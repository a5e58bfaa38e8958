"""`python -m nas_ai_engine serve|wait-ready|reload|worker|smoke`: the engine process, its readiness
probe, the model swap systemd asks for on reload, a llama-cpp-python worker, and the inference that
proves a new build before it goes live."""

import argparse
import json
import sys

from nas_ai_engine import readiness


def _load(config_path: str) -> dict:
    with open(config_path) as config_file:
        return json.load(config_file)


def serve(config: dict) -> None:
    """The front: children on the model that model.json names, behind the guard (native.py)."""
    import asyncio

    from nas_ai_engine import bounds, native
    from nas_ai_engine.guard import Guard

    limits = config["guard"]

    def guard(app, health, extra_metrics=None):
        return Guard(app, health, config["api_key"], bounds.Limits(
            max_tokens=limits["max_tokens"], max_logprobs=limits["max_logprobs"],
            max_logit_bias=limits["max_logit_bias"], default_max_tokens=limits["default_max_tokens"]),
            limits["max_body_bytes"], extra_metrics)

    asyncio.run(native.serve(config, guard))


def worker(config: dict, index: int, model_path: str, alias: str, socket_path: str) -> None:
    """One llama-cpp-python worker on its socket, with its share of the threads."""
    threads = max(1, config["model"]["n_threads"] // config["workers"])
    model = dict(config["model"], n_threads=threads, path=model_path, alias=alias)
    _serve_llama_cpp_python(dict(config, model=model), socket_path)


def _serve_llama_cpp_python(config: dict, uds: str) -> None:
    import uvicorn
    from llama_cpp.server import app as server_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    from nas_ai_engine import metrics

    model = config["model"]
    server_settings = ServerSettings(
        api_key=config["api_key"],
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
    # Behind the front, which guards, measures and probes it before any client request.
    uvicorn.run(app, uds=uds, log_level="warning", access_log=False)


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
    for name in ("serve", "wait-ready", "worker", "reload"):
        command = commands.add_parser(name)
        command.add_argument("--config", required=True)
        command.add_argument("--timeout", type=float, default=300)
        command.add_argument("--index", type=int, default=0)
        command.add_argument("--model", help="worker: the model file")
        command.add_argument("--alias", help="worker: the model's name")
        command.add_argument("--socket", help="worker: where it listens")
        command.add_argument("--pid", type=int, help="reload: the front's PID ($MAINPID)")
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
        worker(_load(args.config), args.index, args.model, args.alias, args.socket)
    elif args.command == "reload":
        from nas_ai_engine import native
        native.request_reload(_load(args.config), args.pid, args.timeout)
    else:
        wait_ready(_load(args.config), args.timeout)


if __name__ == "__main__":
    main()

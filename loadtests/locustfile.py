"""Locust for OpenAI-compatible endpoints, timed as a person feels an LLM answer.

    locust -f loadtests/locustfile.py --host http://nas.local             # web UI on :8089
    locust -f loadtests/locustfile.py --host http://nas.local --headless -u 4 -r 4 -t 2m \
        --csv reports/run --csv-full-history --html reports/run.html      # with the SLO gate

Each request row is a workload kind (`short_question stream`, `summary plain`, ...) timed to the
end of the answer; rows of type METRIC carry `time_to_first_token <kind>` and
inter_token_latency (ms) and tokens_per_second (the value in the time columns is tokens/s), so the web UI, --csv and
--html show their percentiles. A multi-turn kind's first token is timed per turn (`time_to_first_token
chat turn 3`): each user keeps one conversation, whose turns carry the history so far, and sends
its id as X-Session-Id (the gateway keeps it on the engine that holds that history) unless
--sessionless. The API key comes from --api-key or NAS_AI_API_KEY /
OPENAI_API_KEY; the model from --model or the server's /v1/models.
"""

import os
import random
import sys
import time
import uuid

import requests
from locust import User, between, events, task
from locust.exception import StopUser

from loadtests import slo, stream_metrics, workload

KINDS = workload.load()


@events.init_command_line_parser.add_listener
def _options(parser):
    group = parser  # Locust's own parser: its options reach the web UI's custom parameters
    group.add_argument("--api-key", default=os.environ.get("NAS_AI_API_KEY") or os.environ.get("OPENAI_API_KEY", ""),
                       include_in_web_ui=False, help="API key of the endpoint")
    group.add_argument("--model", default="", help="model name; default: the first of /v1/models")
    group.add_argument("--stream-share", type=float, default=0.8, help="share of streamed requests (0-1)")
    group.add_argument("--think-time", type=float, default=1.0, help="mean pause of a user between requests, s")
    group.add_argument("--max-requests", type=int, default=0, help="stop the run after this many requests (0: no bound)")
    group.add_argument("--request-timeout", type=float, default=300, help="seconds before a request fails")
    group.add_argument("--sessionless", action="store_true", default=False,
                       help="send chats without X-Session-Id (the gateway spreads their turns by least_conn)")
    for name, default in slo.DEFAULTS.items():
        group.add_argument("--" + name.replace("_", "-"), type=float, default=default,
                           help=f"SLO threshold (default {default})")


@events.quitting.add_listener
def _slo_gate(environment, **_kwargs):
    options = environment.parsed_options
    if options is None or not getattr(options, "headless", False):
        return
    thresholds = slo.Thresholds(options.slo_short_question_ms, options.slo_short_question_percentile,
                                options.slo_ttft_p99_ms, options.slo_max_failure_ratio)
    problems = slo.broken(environment.stats, thresholds, [k.name for k in KINDS if k.slo])
    for problem in problems:
        print(f"SLO broken: {problem}", file=sys.stderr)
    if problems:
        environment.process_exit_code = 1
    else:
        print("SLO met: every threshold held", file=sys.stderr)


class NasAssistantUser(User):
    """One person using the assistant: asks, reads the answer, asks again."""

    _model = None
    _requests_sent = 0

    def wait_time(self):
        think = self.environment.parsed_options.think_time
        return between(0.5 * think, 1.5 * think)(self)

    def on_start(self):
        options = self.environment.parsed_options
        self.rng = random.Random()
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {options.api_key}"
        if NasAssistantUser._model is None:
            NasAssistantUser._model = options.model or self._first_model()
        self.conversations: dict[str, tuple[workload.Conversation, str]] = {}  # per multi-turn kind

    def _conversation(self, kind: workload.Kind, script: list[dict]) -> tuple[workload.Conversation, str]:
        """This user's conversation of `kind`, a new one (with its own session id) after the last turn."""
        current = self.conversations.get(kind.name)
        if current is None or current[0].done:
            current = workload.Conversation(script), uuid.uuid4().hex
            self.conversations[kind.name] = current
        return current

    def _first_model(self) -> str:
        response = self.session.get(f"{self.host}/v1/models", timeout=30)
        response.raise_for_status()
        return response.json()["data"][0]["id"]

    def _fire(self, request_type: str, name: str, value: float, length: int = 0, exception=None):
        self.environment.events.request.fire(request_type=request_type, name=name, response_time=value,
                                             response_length=length, exception=exception, context={})

    def _bounded(self):
        limit = self.environment.parsed_options.max_requests
        NasAssistantUser._requests_sent += 1
        if limit and NasAssistantUser._requests_sent > limit:
            self.environment.runner.quit()
            raise StopUser()

    @task
    def ask(self):
        self._bounded()
        options = self.environment.parsed_options
        kind, messages = workload.pick(KINDS, self.rng)
        conversation, headers, ttft_name = None, {}, f"time_to_first_token {kind.name}"
        if kind.multi_turn:
            conversation, session = self._conversation(kind, messages)
            messages, ttft_name = conversation.messages(), f"{ttft_name} turn {conversation.turn}"
            if not options.sessionless:
                headers["X-Session-Id"] = session
        stream = self.rng.random() < options.stream_share
        name = f"{kind.name} {'stream' if stream else 'plain'}"
        body = {"model": NasAssistantUser._model, "messages": messages, "max_tokens": kind.max_tokens,
                "stream": stream}
        sent = time.monotonic()
        try:
            with self.session.post(f"{self.host}/v1/chat/completions", json=body, stream=stream, headers=headers,
                                   timeout=options.request_timeout) as response:
                if response.status_code != 200:
                    raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
                if stream:
                    lines = ((time.monotonic(), line) for line in response.iter_lines() if line)
                    figures = stream_metrics.measure(lines, sent)
                else:
                    payload = response.json()
                    figures = stream_metrics.StreamMetrics(
                        None, time.monotonic() - sent, payload["usage"]["completion_tokens"],
                        payload["choices"][0]["message"]["content"] or "")
        except (requests.RequestException, RuntimeError, ValueError, KeyError) as error:
            self._fire("POST", name, (time.monotonic() - sent) * 1000, exception=error)
            return
        self._fire("POST", name, figures.total_s * 1000, figures.output_tokens)
        if conversation is not None:
            conversation.answered(figures.text)
        if figures.ttft_s is not None:
            # Per kind: a 1,000-token summary's prompt takes far longer than a short question's.
            self._fire("METRIC", ttft_name, figures.ttft_s * 1000)
        if figures.tokens_per_second:
            self._fire("METRIC", "tokens_per_second", figures.tokens_per_second, figures.output_tokens)
            self._fire("METRIC", "inter_token_latency", figures.inter_token_latency_s * 1000)

"""The acceptance gate: an engine joins the gateway's pool only once the gateway host itself has
sent it a few of the workload's short questions (loadtests/workload.toml) and each was answered
within the article's SLO. Until then nginx marks it `down`, and the gateway's other engines serve.
An engine is gated when it first joins a gateway; a model change afterwards is proven by the
engine's own probe before it serves (model_rollout.py)."""

import json
import shlex
from io import StringIO

from pyinfra import host
from pyinfra.api.exceptions import OperationError
from pyinfra.facts.server import Command
from pyinfra.operations import python

from loadtests import slo, workload
from tasks.plan import Plan
from tasks.rendering import put_text

# The upstreams (host:port) this gateway has accepted, in nginx's private directory.
ACCEPTED_NAME = "accepted-engines.json"

# Runs on the gateway host with its own python3: the questions, one after another, to each engine
# (the payload, with the backend key, is a 0600 file it removes); prints one JSON line per engine.
GATE_SCRIPT = r"""
import json, sys, time, urllib.request
payload_path = sys.argv[1]
with open(payload_path) as handle:
    payload = json.load(handle)
for engine in payload["engines"]:
    times, errors = [], []
    for question in payload["questions"]:
        request = urllib.request.Request(
            f"http://{engine}/v1/chat/completions", data=json.dumps(question).encode(),
            headers={"Authorization": "Bearer " + payload["key"], "Content-Type": "application/json"})
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=payload["timeout_s"]) as response:
                answer = json.load(response)
            if answer["usage"]["completion_tokens"] < 1:
                raise ValueError("no token")
            times.append(time.monotonic() - started)
        except Exception as error:
            errors.append(f"{type(error).__name__}: {error}"[:200])
    print(json.dumps({"engine": engine, "seconds": times, "errors": errors}))
"""


# Also on the gateway host: the accepted engines' lines lose their `down`, and join the accepted list.
ACCEPT_SCRIPT = r"""
import json, re, sys
command, path, engines = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(path) as handle:
    text = handle.read()
if command == "site":
    for engine in engines:
        text = re.sub(rf"^(    server {re.escape(engine)} [^;\n]*) down;$", r"\1;", text, flags=re.M)
else:
    text = json.dumps(sorted(set(json.loads(text)) | set(engines))) + "\n"
with open(path, "w") as handle:
    handle.write(text)
"""


def accepted_path(private_dir: str) -> str:
    return f"{private_dir}/{ACCEPTED_NAME}"


def pending(plan: Plan, upstreams: list[str], private_dir: str, site_path: str) -> list[str]:
    """The upstreams this gateway has not accepted (all of them when the gate is off: none)."""
    if plan.settings.gateway_accept_requests == 0:
        return []
    # Without the list (a stack deployed before the gate existed), the engines the live site has
    # up are accepted already: an upgrade takes no engine out of the pool.
    raw = host.get_fact(Command, f"cat {accepted_path(private_dir)} 2>/dev/null || "
                                 f"grep -s '^    server [^ ]* [^;]*;$' {site_path} | grep -v ' down;$' "
                                 "| cut -d' ' -f6 || true")
    raw = (raw or "").strip()
    try:
        accepted = set(json.loads(raw)) if raw.startswith("[") else set(raw.split())
    except ValueError:
        accepted = set()
    # Engines that left the pool are forgotten: one that comes back is gated again.
    put_text("Engines accepted by this gateway", json.dumps(sorted(accepted & set(upstreams))) + "\n",
             accepted_path(private_dir), "0600")
    return [upstream for upstream in upstreams if upstream not in accepted]


def questions(plan: Plan) -> list[dict]:
    short = next(kind for kind in workload.load() if kind.slo)
    return [{"messages": conversation, "max_tokens": short.max_tokens, "temperature": 0}
            for conversation in short.conversations[:plan.settings.gateway_accept_requests]]


def gate(plan: Plan, engines: list[str], site_path: str, private_dir: str, backend_key: str) -> None:
    """Execute time, after nginx reloaded with `engines` down: each that passes is marked up."""
    limit_ms = plan.settings.gateway_accept_p95_ms
    python.call(name=f"Acceptance gate: {len(engines)} engine(s) join the pool after short questions within "
                     f"{limit_ms} ms", function=_gate, engines=engines, site_path=site_path,
                private_dir=private_dir, limit_ms=limit_ms,
                # A question 3 times over the limit has failed already: a hung engine holds the deploy little.
                payload={"engines": engines, "questions": questions(plan), "key": backend_key,
                         "timeout_s": max(10, 3 * limit_ms / 1000)})


def _verdict(result: dict, asked: int, limit_ms: int) -> str | None:
    """Why an engine fails the gate, or None."""
    if result["errors"]:
        return f"{len(result['errors'])} of {asked} short questions failed: {result['errors'][0]}"
    times = sorted(result["seconds"])
    p95_ms = times[max(0, round(len(times) * slo.DEFAULTS["slo_short_question_percentile"] / 100) - 1)] * 1000
    if p95_ms > limit_ms:
        return (f"p{slo.DEFAULTS['slo_short_question_percentile']} {p95_ms:.0f} ms > {limit_ms} ms "
                f"over {asked} short questions")
    return None


def _gate(engines: list[str], site_path: str, private_dir: str, limit_ms: int, payload: dict) -> None:
    sudo = bool(host.data.get("_sudo", False))
    payload_path = f"{private_dir}/gate.json"
    # In nginx's private directory (0700), read and removed at once.
    if not host.put_file(StringIO(json.dumps(payload)), payload_path, _sudo=sudo):
        raise OperationError(f"upload of the gate's questions to {host.name} failed")
    ok, output = host.run_shell_command(f"chmod 0600 {payload_path}; python3 -c {shlex.quote(GATE_SCRIPT)} "
                                        f"{payload_path}; status=$?; rm -f {payload_path}; exit $status", _sudo=sudo)
    if not ok:
        raise OperationError("the acceptance gate's script failed: " + "\n".join(output.stderr_lines[-5:]))
    results = [json.loads(line) for line in output.stdout_lines if line.startswith("{")]
    failed = {r["engine"]: why for r in results if (why := _verdict(r, len(payload["questions"]), limit_ms))}
    passed = [r["engine"] for r in results if r["engine"] not in failed]
    for result in results:
        times = ", ".join(f"{t * 1000:.0f}" for t in result["seconds"])
        print(f"    [{host.name}] acceptance gate {result['engine']}: {times} ms"
              + (f": refused, {failed[result['engine']]}" if result["engine"] in failed else ": accepted"))
    if passed:
        # The accepted engines' `down` goes; nginx checks the site before it reloads.
        engines = " ".join(shlex.quote(engine) for engine in passed)
        accept = f"python3 -c {shlex.quote(ACCEPT_SCRIPT)}"
        # The list last: an engine is accepted once nginx serves the site that has it up.
        ok, output = host.run_shell_command(f"""set -e
cp -p {site_path} {site_path}.gated
{accept} site {site_path} {engines}
if ! nginx -t -q || ! systemctl reload nginx; then mv -f {site_path}.gated {site_path}; exit 1; fi
rm -f {site_path}.gated
{accept} list {accepted_path(private_dir)} {engines}""", _sudo=sudo)
        if not ok:
            raise OperationError("the accepted engines could not be put in the pool: "
                                 + "\n".join(output.stderr_lines[-5:]))
    if failed:
        raise OperationError("; ".join(f"engine {engine} failed the acceptance gate ({why}): nginx keeps it down, "
                                       "the other engines serve" for engine, why in failed.items()))

"""Model changes on a running engine: model.json names the model to serve (path by sha256, size,
memory need, how it goes live, the models kept for rollback); a change goes live through
`systemctl reload` (the engine's front loads it, probes it, and only then sends it requests), one
host at a time. A host whose swap fails keeps its old model and stops the rollout: the hosts after
it are left untouched. Models older than the kept ones leave the store."""

import json

from pyinfra import host
from pyinfra.api.exceptions import OperationError
from pyinfra.facts.server import Command
from pyinfra.operations import files, python

from tasks.plan import Plan
from tasks.settings import DeployError

STATE_DIR = "nas-ai-engine"  # the engine's StateDirectory: its record of a rollback survives restarts
ROLLBACK_PATH = f"/var/lib/{STATE_DIR}/rollback.json"
SWAP_REPORT = "/run/nas-ai-engine/swap.json"

# The host whose swap failed in this run: every later host keeps its model. pyinfra runs a serial
# operation over its active hosts in its own order, not the inventory's.
_stopped_by: list[str] = []
_untouched: list[str] = []


def config_path(settings) -> str:
    return f"{settings.system_config_dir}/model.json"


def _entry(model: dict) -> dict:
    return {key: model[key] for key in ("alias", "sha256", "path", "size", "needed_bytes", "parallel") if key in model}


def serving(served: dict) -> dict | None:
    """The model the engine serves: model.json's, or the one it rolled back to from it."""
    model, rollback = served.get("model"), served.get("rollback")
    if model and rollback and rollback["from"]["sha256"] == model["sha256"]:
        return rollback["to"]
    return model


def check(settings, model, served: dict) -> None:
    """Preflight: a model the engine rolled back from is not pushed again unless asked."""
    rollback, configured = served.get("rollback"), served.get("model")
    if rollback and configured and rollback["from"]["sha256"] == configured["sha256"] == model.sha256 \
            and not settings.model_retry:
        back = rollback["to"]
        raise DeployError(
            f"model {model.name} ({model.sha256[:12]}) was rolled back at {rollback['at']} because "
            f"{rollback['reason']}; {back['alias']} ({back['sha256'][:12]}) serves. Deploy another model "
            f"(model_sha256 = \"{back['sha256']}\" keeps the one serving), or set model_retry = True to try it again")


def model_config(plan: Plan) -> dict:
    """model.json for this plan, from what the host serves now."""
    settings, model = plan.settings, plan.model
    served = plan.served or {}
    configured, now = served.get("model"), serving(served)
    wanted = {"alias": model.name, "sha256": model.sha256, "path": plan.model_path, "size": model.size,
              "needed_bytes": plan.budget.needed_bytes, "parallel": plan.parallel}
    # Kept for a rollback, newest first: the model serving now (the one the engine went back to,
    # after a rollback), what model.json named, and its own previous ones.
    previous, seen = [], {model.sha256}
    for entry in [now, configured, *((configured or {}).get("previous", []))]:
        if entry and entry["sha256"] not in seen:
            seen.add(entry["sha256"])
            previous.append(_entry(entry))
    swap = settings.model_swap
    if swap == "auto":
        old = now if now and now["sha256"] != model.sha256 else None
        # Both models in memory for the moment of the swap, or requests wait while one loads.
        holds_both = old is None or old["needed_bytes"] + wanted["needed_bytes"] <= plan.limits.memory_high
        swap = "blue-green" if holds_both else "queue"
        if old is None and configured:
            swap = configured.get("swap", swap)
    return dict(wanted, swap=swap, previous=previous[:settings.model_keep_previous])


def changes(plan: Plan) -> bool:
    """model.json names another model, or the engine went back from it and a retry is asked."""
    served = plan.served or {}
    configured = served.get("model")
    return not configured or {configured["sha256"], serving(served)["sha256"]} != {plan.model.sha256}


def activate(plan: Plan, reload: bool, unit: str, python_path: str) -> None:
    """Write model.json and, on a running engine that is not restarted anyway, reload it: one host
    at a time. Then point `current` at the model and remove models no longer kept."""
    config = model_config(plan)
    python.call(name=f"Model {plan.model.name} {plan.model.sha256[:12]} goes live"
                     + (" (reload, one host at a time)" if reload else ""),
                function=_activate, script=_script(plan, config, reload, unit, python_path), _serial=True)


def _script(plan: Plan, config: dict, reload: bool, unit: str, python_path: str) -> str:
    settings, model = plan.settings, plan.model
    target = config_path(settings)
    message = (f"{python_path} -c 'import json, sys; print(json.load(open(sys.argv[1]))[\"message\"])' "
               f"{SWAP_REPORT} 2>/dev/null || echo 'no swap report: see journalctl -u {unit}'")
    reload_lines = f"""if ! systemctl reload {unit}; then
    if [ -e {target}.served ]; then mv -f {target}.served {target}; fi
    if [ -e {ROLLBACK_PATH}.served ]; then mv -f {ROLLBACK_PATH}.served {ROLLBACK_PATH}; fi
    echo "{host.name}: model {model.name} ({model.sha256[:12]}) did not go live, the old model serves on: $({message})" >&2
    exit 1
fi""" if reload else ""
    return f"""set -e
if [ -e {target} ]; then cp -p {target} {target}.served; fi
# The engine's record of a rollback is about the model.json it replaces (the deploy refused that
# model unless model_retry): it goes, and comes back if this swap fails.
if [ -e {ROLLBACK_PATH} ]; then mv -f {ROLLBACK_PATH} {ROLLBACK_PATH}.served; fi
cat > {target}.next <<'NAS_AI_MODEL_JSON'
{json.dumps(config, indent=2, sort_keys=True)}
NAS_AI_MODEL_JSON
chown root:{settings.system_user} {target}.next
chmod 0640 {target}.next
mv -f {target}.next {target}
{reload_lines}
rm -f {target}.served {ROLLBACK_PATH}.served
ln -sfn {model.sha256}.gguf {settings.model_store_dir}/{model.name}/current.next
mv -fT {settings.model_store_dir}/{model.name}/current.next {settings.model_store_dir}/{model.name}/current"""


def _activate(script: str) -> None:
    """Execute time. After a host's failed swap, the rollout stops: this host keeps its model (and
    runs the rest of its deploy; `verdict` fails it at the end)."""
    if _stopped_by:
        _untouched.append(host.name)
        print(f"    [{host.name}] rollout stopped after {_stopped_by[0]} failed: this host keeps its model")
        return
    ok, output = host.run_shell_command(script, _sudo=bool(host.data.get("_sudo", False)))
    for line in output.stdout_lines:
        print(f"    [{host.name}] {line}")
    if not ok:
        _stopped_by.append(host.name)
        raise OperationError("\n".join(output.stderr_lines[-5:]) or f"the model swap failed on {host.name}")


def prune(plan: Plan) -> None:
    """Models neither served nor kept for rollback leave the store (after a swap that failed: the
    file that failed)."""
    served = plan.served or {}
    if served.get("model") is None:
        return  # what the host kept before model.json existed is not known: nothing is removed
    config = model_config(plan)
    kept = {entry["path"] for entry in [config, *config["previous"], serving(served)]}
    stored = host.get_fact(Command, f"ls -1 {plan.settings.model_store_dir}/*/*.gguf 2>/dev/null || true")
    for path in sorted(set((stored or "").split()) - kept):
        files.file(name=f"Remove model {path} (neither served nor kept)", path=path, present=False)


def verdict(plan: Plan) -> None:
    """The last operation of an inference host whose model changes: if the rollout left it
    untouched, the deploy fails there."""
    if changes(plan):
        python.call(name="Model rollout verdict", function=_verdict)


def _verdict() -> None:
    if host.name in _untouched:
        raise OperationError(f"the model rollout stopped after {_stopped_by[0]} failed; {host.name} keeps its "
                             "old model (the rest of its deploy is done): fix the model and deploy again")

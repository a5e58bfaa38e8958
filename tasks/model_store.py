"""The model store: <store>/<name>/<sha256>.gguf, verified on the host. An upload is skipped when
the file is already there with the right sum. Which model serves, the `current` link and what
leaves the store: model_rollout.py."""

from pyinfra import host
from pyinfra.facts.files import Sha256File
from pyinfra.operations import files, server

from tasks.plan import Plan


def install(plan: Plan) -> None:
    settings, model = plan.settings, plan.model
    directory = f"{settings.model_store_dir}/{model.name}"
    files.directory(name=f"Model directory {directory}", path=directory, user="root",
                    group=settings.system_user, mode="0750")
    uploading = host.get_fact(Sha256File, path=plan.model_path) != model.sha256
    if uploading:
        partial = f"{plan.model_path}.partial"
        files.put(name=f"Upload model {model.name} ({model.size >> 20} MiB)", src=str(model.path),
                  dest=partial, user="root", group=settings.system_user, mode="0640")
        server.shell(name=f"Verify model {model.sha256[:12]} on the host and store it",
                     commands=[f"echo '{model.sha256}  {partial}' | sha256sum --check --quiet "
                               f"&& mv -f {partial} {plan.model_path}"])

"""The model store: <store>/<name>/<sha256>.gguf, verified on the host, and a `current` link to
the one being served. An upload is skipped when the file is already there with the right sum."""

from pyinfra import host
from pyinfra.facts.files import Sha256File
from pyinfra.operations import files, server

from tasks.plan import Plan


def install(plan: Plan) -> bool:
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
    link = files.link(name=f"Serve model {model.name} {model.sha256[:12]}", path=f"{directory}/current",
               target=f"{model.sha256}.gguf", user="root", group=settings.system_user)
    return uploading or link.will_change

"""Start the serving application on a running Ray: checks first, then `serve.run`."""

from __future__ import annotations

import os
from pathlib import Path

from vbon.config import WorkflowConfig
from vbon.errors import ConfigError

EXAMPLE = """curl -s http://{host}:{port}/v1/completions -H 'Content-Type: application/json'{auth} \\
  -d '{{"model": "{model}", "prompt": "This film was", "max_tokens": 24, "seed": 0}}'"""


def api_key(cfg: WorkflowConfig) -> str | None:
    """The bearer token from the environment variable that `serving.api_key_env` names."""
    name = cfg.serving.api_key_env
    if name is None:
        return None
    key = os.environ.get(name)
    if not key:
        raise ConfigError(
            f"serving.api_key_env = {name!r} but that environment variable is not set; "
            "export it or remove serving.api_key_env"
        )
    return key


def serve_model(
    cfg: WorkflowConfig, model: str | Path, model_name: str | None = None
) -> dict[str, str]:
    """Deploy `model` (a folder, a hub name or a `builtin:` name, as a workflow's
    `model.name_or_path` takes; with `serving.bon_n`, BoN over it) and return the endpoint's
    base URL, served model name and an example request."""
    from ray import serve

    from vbon.models import load_tokenizer
    from vbon.serving.app import APP_NAME, build_app

    key = api_key(cfg)
    same = str(model) == cfg.model.name_or_path  # keeps the workflow's revision and dtype
    model = (
        cfg.model
        if same
        else cfg.model.model_copy(update={"name_or_path": str(model), "revision": None})
    )
    load_tokenizer(model)  # fails fast, on one line, before any replica starts
    s = cfg.serving
    name = model_name or cfg.name
    serve.start(proxy_location=s.proxy_location, http_options={"host": s.host, "port": s.port})
    serve.run(
        build_app(model, s, cfg.reward, name, key), name=APP_NAME, route_prefix="/", blocking=False
    )
    auth = " -H 'Authorization: Bearer $" + s.api_key_env + "'" if s.api_key_env else ""
    return {
        "url": f"http://{s.host}:{s.port}",
        "model": name,
        "example": EXAMPLE.format(host=s.host, port=s.port, auth=auth, model=name),
    }


def app(args: dict[str, str]):
    """Serve application builder for `serve run` and KubeRay's RayService (serveConfigV2):
    `import_path: vbon.serving.launch:app` with args `model_dir` and optional `workflow`
    (whose serving, reward and model sections apply)."""
    from vbon.config import load_workflow
    from vbon.serving.app import build_app

    if "model_dir" not in args:
        raise ConfigError("serve args: model_dir is required (the folder `vbon train` wrote)")
    cfg = load_workflow(args["workflow"]) if args.get("workflow") else WorkflowConfig()
    model = cfg.model.model_copy(update={"name_or_path": args["model_dir"], "revision": None})
    return build_app(model, cfg.serving, cfg.reward, args.get("model_name", cfg.name), api_key(cfg))


def drain_and_shutdown(drain_s: float) -> int:
    """Stop the ingress taking requests, wait up to `drain_s` seconds for those in flight, then
    shut Serve down. Returns how many were still in flight."""
    import time

    from ray import serve

    from vbon.serving.app import APP_NAME

    left = 0
    try:
        ingress = serve.get_deployment_handle("Ingress", app_name=APP_NAME)
        left = ingress.drain.remote().result(timeout_s=10)
        deadline = time.monotonic() + drain_s
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = ingress.pending.remote().result(timeout_s=10)
    finally:
        serve.shutdown()
    return left

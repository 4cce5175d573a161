"""The deployment files (deploy/docker-compose.yml, deploy/k8s/*.yaml) agree with the code.

No Docker or Kubernetes runs here: every file is parsed, and each `vigil` command in it is parsed
by vigil's own argparse parser, each `mlflow server` command by MLflow's click command; ports,
probes and routes are checked against the app's real routes, and every environment name against
the names the code (vigil, MLflow, boto) reads.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
IMAGE = "vigil:0.1.0"
SERVE_PORT = 8000


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def compose() -> dict:
    return documents(DEPLOY / "docker-compose.yml")[0]


def k8s() -> dict[str, dict]:
    """kind/name -> manifest, over every file of deploy/k8s."""
    found = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in documents(path):
            found[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return found


def vigil_env_names() -> set[str]:
    """Environment names vigil's own source reads."""
    text = "\n".join(p.read_text() for p in (REPO_ROOT / "src" / "vigil").rglob("*.py"))
    return set(re.findall(r"\"((?:VIGIL|MLFLOW)_[A-Z0-9_]+)\"", text))


def known_env(name: str) -> bool:
    """True when vigil, MLflow, botocore, DVC or the image's allocator reads ``name``."""
    import botocore.credentials
    import mlflow.environment_variables as mlflow_env

    if name in vigil_env_names() or hasattr(mlflow_env, name) or hasattr(mlflow_env, f"_{name}"):
        return True
    if name.startswith("AWS_"):
        return name in Path(botocore.credentials.__file__).read_text() or name == (
            "AWS_DEFAULT_REGION"
        )
    return name in {"DVC_NO_ANALYTICS"}


def parse_vigil(argv: list[str]):
    from vigil.cli import build_parser

    assert argv[0] == "vigil", argv
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit as error:  # argparse exits on an unknown command or flag
        raise AssertionError(f"`{' '.join(argv)}` does not parse: exit {error.code}") from None


def parse_mlflow_server(argv: list[str]) -> dict:
    from mlflow.cli import cli

    assert argv[:2] == ["mlflow", "server"], argv
    server = cli.commands["server"]
    return server.make_context("server", list(argv[2:]), resilient_parsing=False).params


def app_routes() -> set[str]:
    from vigil.serving.app import create_app
    from vigil.serving.follow import ModelHolder

    return set(create_app(ModelHolder(None)).openapi()["paths"])


def expand(value: str) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR:?msg}`` -> default (or a placeholder)."""
    return re.sub(r"\$\{[A-Z_]+(?::-([^}]*)|:\?[^}]*)?\}", lambda m: m.group(1) or "x", value)


def env_names(service: dict) -> set[str]:
    env = service.get("environment") or {}
    return set(env) if isinstance(env, dict) else {item.split("=", 1)[0] for item in env}


def test_compose_services_images_and_commands():
    services = compose()["services"]
    assert {"postgres", "minio", "mlflow", "serve", "schedule"} <= set(services)
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"
    for name in ("mlflow", "serve", "schedule"):
        assert services[name]["image"] == IMAGE, name
    assert services["mlflow"]["build"]["dockerfile"] == "Dockerfile"
    assert (DEPLOY / services["mlflow"]["build"]["context"] / "Dockerfile").is_file()

    serve = parse_vigil(services["serve"]["command"])
    assert serve.command == "serve" and serve.port == SERVE_PORT and serve.host == "0.0.0.0"
    assert f"{SERVE_PORT}:{SERVE_PORT}" in services["serve"]["ports"]
    probe = " ".join(services["serve"]["healthcheck"]["test"])
    assert f"127.0.0.1:{SERVE_PORT}/ready" in probe
    schedule = parse_vigil(services["schedule"]["command"])
    assert schedule.command == "schedule" and schedule.root == "/srv/vigil"
    assert (REPO_ROOT / schedule.config).is_file()

    params = parse_mlflow_server([expand(str(a)) for a in services["mlflow"]["command"]])
    assert params["backend_store_uri"].startswith("postgresql+psycopg2://")
    assert "@postgres:5432/" in params["backend_store_uri"]
    assert params["artifacts_destination"] == "s3://vigil/mlartifacts"
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    port = params["port"]
    assert f"{port}:{port}" in services["mlflow"]["ports"]
    assert f"mlflow:{port}" in params["allowed_hosts"]
    for name in ("serve", "schedule"):
        assert services[name]["environment"]["MLFLOW_TRACKING_URI"] == f"http://mlflow:{port}"
    assert "minio" in services and "9000:9000" in services["minio"]["ports"]


def test_compose_environment_names_are_read_by_the_code():
    services = compose()["services"]
    for name in ("mlflow", "serve", "schedule"):
        for env in env_names(services[name]):
            assert known_env(env), f"{name}: nothing reads {env}"
    serve_env = env_names(services["serve"])
    assert {"MLFLOW_TRACKING_URI", "VIGIL_MODEL_NAME", "VIGIL_WEBHOOK_SECRET"} <= serve_env
    example = (DEPLOY / ".env.example").read_text()
    text = (DEPLOY / "docker-compose.yml").read_text()
    for variable in set(re.findall(r"\$\{([A-Z_]+)", text)) - {"VIGIL_CHECKOUT"}:
        assert f"{variable}=" in example, f".env.example lacks {variable}"


def test_k8s_serve_deployment_probes_and_service():
    manifests = k8s()
    deployment = manifests["Deployment/vigil-serve"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == IMAGE
    args = parse_vigil(container["command"])
    assert args.command == "serve" and args.port == SERVE_PORT
    assert [p["containerPort"] for p in container["ports"]] == [SERVE_PORT]
    routes = app_routes()
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
        get = container[probe]["httpGet"]
        assert get == {"path": path, "port": SERVE_PORT}, probe
        assert path in routes
    assert "/webhooks/mlflow" in routes and "/score" in routes
    names = {item["name"] for item in container["env"]}
    assert {"MLFLOW_TRACKING_URI", "VIGIL_MODEL_NAME", "VIGIL_API_TOKEN"} <= names
    for name in names:
        assert known_env(name), f"nothing reads {name}"
    service = manifests["Service/vigil-serve"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == SERVE_PORT


def test_k8s_retrain_cronjob():
    job = k8s()["CronJob/vigil-retrain"]
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    fields = job["spec"]["schedule"].split()
    assert len(fields) == 5, "a crontab schedule has 5 fields"
    container = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == IMAGE
    args = parse_vigil(container["command"])
    assert args.command == "retrain" and args.root == container["workingDir"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert args.root in mounts
    for item in container["env"]:
        assert known_env(item["name"]), f"nothing reads {item['name']}"


def test_k8s_inference_service_is_the_mlserver_mlflow_route():
    service = k8s()["InferenceService/vigil-capsules"]
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    model = service["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "mlflow" and model["protocolVersion"] == "v2"
    assert model["storageUri"].startswith("s3://vigil/mlartifacts/")


@pytest.mark.parametrize("path", sorted(p.name for p in (DEPLOY / "k8s").glob("*.yaml")))
def test_every_manifest_parses_with_kind_and_name(path):
    for doc in documents(DEPLOY / "k8s" / path):
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]

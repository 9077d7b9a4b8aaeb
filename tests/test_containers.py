"""The container files say what docs/scaling.md promises: the Makefile's install, a non-root service with a
health check and no downloads, and a compose file whose services fit together. No image is built here
(docs/benchmarks.md records the builds)."""

from __future__ import annotations

import json
import re
import shlex
from importlib.metadata import metadata
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser
from sqlalchemy.engine import make_url

from core.workspace import DATABASE_URL_ENV, DEFAULT_ROOT_ENV

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    return DockerfileParser(str(ROOT / "Dockerfile"))


@pytest.fixture(scope="module")
def instructions(dockerfile) -> list[tuple[str, str]]:
    return [(step["instruction"], step["value"]) for step in dockerfile.structure if step["instruction"] != "COMMENT"]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))


def exec_form(value: str) -> list[str]:
    return json.loads(value) if value.lstrip().startswith("[") else shlex.split(value)


def test_the_image_installs_the_project_with_the_makefiles_own_recipe(instructions):
    runs = [value for instruction, value in instructions if instruction == "RUN"]
    install = [run for run in runs if "make install" in run]
    assert len(install) == 1, "one RUN installs the project, through `make install`"
    extras = re.search(r"make install\b.*\bEXTRAS=(\S+)", install[0]).group(1)
    requirements = metadata("marketsearch").get_all("Requires-Dist")
    assert any(r.startswith("ray") and f'extra == "{extras}"' in r for r in requirements), "Ray for the batch jobs"
    recipe = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "-e '.[$(EXTRAS)]'" in recipe, "the Makefile installs the extras the Dockerfile names"


def test_the_service_runs_as_a_user_who_is_not_root(instructions):
    users = [value.split(":")[0] for instruction, value in instructions if instruction == "USER"]
    assert users and users[-1] not in ("root", "0")
    last_user = max(i for i, (instruction, _) in enumerate(instructions) if instruction == "USER")
    assert all(instruction != "RUN" for instruction, _ in instructions[last_user:]), "nothing runs as root after it"


def test_the_health_check_asks_the_health_endpoint_on_the_served_port(instructions):
    checks = [value for instruction, value in instructions if instruction == "HEALTHCHECK"]
    assert len(checks) == 1
    exposed = {value for instruction, value in instructions if instruction == "EXPOSE"}
    assert re.search(r"http://127\.0\.0\.1:(\d+)/health\b", checks[0]).group(1) in exposed


def test_the_default_command_serves_the_workspace_volume_to_other_machines(dockerfile, instructions):
    command = exec_form(dockerfile.cmd)
    assert command[:2] == ["marketsearch", "serve"] and command[command.index("--host") + 1] == "0.0.0.0"
    volumes = [exec_form(value) for instruction, value in instructions if instruction == "VOLUME"]
    assert [dockerfile.envs[DEFAULT_ROOT_ENV]] in volumes


def test_nothing_downloads_at_run_time(dockerfile):
    assert dockerfile.envs.get("MARKETSEARCH_OFFLINE") == "1" and dockerfile.envs.get("HF_HUB_OFFLINE") == "1"


def test_the_default_base_is_a_public_python_image_that_a_build_argument_replaces(dockerfile):
    assert [step["value"] for step in dockerfile.structure if step["instruction"] == "FROM"] == ["${BASE}"]
    assert dockerfile.baseimage.startswith("python:3.")  # the ARG's default


def test_the_build_context_leaves_out_the_venv_workspaces_and_git():
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    for path in (".venv/", "workspace/", ".git/"):
        assert path in ignored


def test_compose_serves_the_demo_from_postgresql_after_building_it(compose):
    services = compose["services"]
    assert {"api", "postgres", "build", "ray-head"} <= services.keys()
    assert re.match(r"postgres:15\b", services["postgres"]["image"])
    assert "pgdata" in {volume.split(":")[0] for volume in services["postgres"]["volumes"]}

    api = services["api"]
    command = api["command"]
    assert command[:2] == ["marketsearch", "serve"]
    assert command[command.index("--workers") + 1] == "2" or api.get("deploy", {}).get("replicas") == 2
    assert api["depends_on"]["build"]["condition"] == "service_completed_successfully"
    assert api["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "marketsearch demo" in " ".join(services["build"]["command"])
    assert services["ray-head"]["command"][:4] == ["ray", "start", "--head", "--block"]


def test_every_marketsearch_service_shares_the_workspace_and_the_catalogue_without_a_password_in_the_url(
    compose, dockerfile
):
    workspace = dockerfile.envs[DEFAULT_ROOT_ENV]
    for name in ("api", "build", "ray-head"):
        service = compose["services"][name]
        assert f"workspace:{workspace}" in service["volumes"], name
        url = make_url(service["environment"][DATABASE_URL_ENV])
        assert url.drivername == "postgresql+psycopg" and url.host == "postgres", name
        assert url.password is None, f"{name}: the password goes through PGPASSWORD, not the URL"
        assert service["environment"]["PGPASSWORD"] == compose["services"]["postgres"]["environment"][
            "POSTGRES_PASSWORD"
        ]

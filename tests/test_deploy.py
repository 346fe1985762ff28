"""The on-premises files (deploy/) agree with the product, checked without Docker: every setting the
compose file reads is in .env and explained there, every setting the service is handed is one
`isacir serve` reads, and no secret can reach an image. `make stack-test` runs the stack itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from isacir.cli import app

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "deploy" / "compose"


def env_file() -> dict[str, str]:
    """.env's settings, each with the comment lines right above it."""
    settings, comment = {}, []
    for line in (COMPOSE / ".env").read_text().splitlines():
        if line.startswith("#"):
            comment.append(line)
        elif "=" in line:
            name, _ = line.split("=", 1)
            settings[name] = " ".join(c for c in comment if not c.startswith("# ---"))
            comment = []
        else:
            comment = []
    return settings


def test_every_compose_setting_is_in_env_with_an_explanation_and_none_is_unused():
    text = (COMPOSE / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{(\w+)\}", text))
    settings = env_file()
    assert used - set(settings) == set(), "read by the compose file but not set in .env"
    assert set(settings) - used == set(), "set in .env but read by nothing"
    assert all(len(why) > 20 for why in settings.values()), [k for k, v in settings.items() if len(v) <= 20]


def _serve_envvars() -> set[str]:
    command = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    return {p.envvar for p in command.params if isinstance(getattr(p, "envvar", None), str)}


def test_the_service_is_handed_only_settings_that_serve_reads():
    spec = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    env = spec["services"]["isacir"]["environment"]
    ours = {name for name in env if name.startswith("ISACIR_")}
    assert ours <= _serve_envvars(), ours - _serve_envvars()
    # the database password arrives as a file the entrypoint reads, never as a value
    assert "PGPASSWORD" not in env and env["PGPASSWORD_FILE"].startswith("/run/secrets/")
    assert env["ISACIR_API_KEY_FILE"].startswith("/run/secrets/keys/")  # a folder: rotations are seen


def test_serve_reads_its_settings_from_the_environment(tmp_path):
    """What the image relies on: a setting given only as ISACIR_* reaches `isacir serve`."""
    missing = tmp_path / "no-gallery-here"
    result = CliRunner().invoke(app, ["serve"], env={"ISACIR_GALLERY": str(missing), "ISACIR_PORT": "0"})
    assert result.exit_code != 0
    assert str(missing) in str(result.exception) + result.output


def test_no_secret_or_local_file_can_reach_an_image():
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*")] == "*", "the build context must be a whitelist"
    allowed = [line[1:] for line in ignore if line.startswith("!")]
    assert not any(a.startswith("deploy/compose") for a in allowed)
    for dockerfile in (ROOT / "deploy" / "docker").glob("*.Dockerfile"):
        text = dockerfile.read_text()
        copied = re.findall(r"^(?:COPY|ADD)\s+(.+)$", text, re.M)
        assert not any("secrets" in c or "compose" in c for c in copied), dockerfile.name
        assert not re.search(r"^(ENV|ARG)\s+\w*(PASSWORD|KEY|TOKEN)\w*=", text, re.M), dockerfile.name
    spec = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    for name, service in spec["services"].items():
        for volume in service.get("volumes", []):
            if "secrets" in volume.split(":")[0]:
                assert volume.endswith(":ro"), (name, volume)


@pytest.mark.parametrize("service", ["isacir", "postgres", "proxy", "prometheus"])
def test_services_that_read_secrets_join_the_secrets_group(service):
    spec = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    assert spec["services"][service]["group_add"] == ["${ISACIR_SECRETS_GID}"]

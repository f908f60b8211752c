"""The GitHub workflows: pinned actions, least privilege, and commands that exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from st_retrofit.cli import build_parser

WORKFLOWS = Path(__file__).parents[1] / ".github" / "workflows"


def load(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


@pytest.mark.parametrize("name", ["ci.yml", "release.yml"])
def test_actions_are_pinned_to_commit_shas_and_permissions_are_explicit(name):
    workflow = load(name)
    assert workflow["permissions"] == {}
    for job in workflow["jobs"].values():
        assert "permissions" in job
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), step["uses"]
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False


def test_ci_runs_the_readme_test_command():
    steps = load("ci.yml")["jobs"]["test"]["steps"]
    assert any(step.get("run") == "bash .ci/run" for step in steps)
    assert "make test" in (Path(__file__).parents[1] / ".ci" / "run").read_text()


def test_release_uses_the_token_only_to_publish_and_runs_commands_that_exist():
    job = load("release.yml")["jobs"]["release"]
    with_token = [step["name"] for step in job["steps"] if "HF_TOKEN" in str(step.get("env", {}))]
    assert with_token == ["Publish to the Hub"]
    assert job["permissions"] == {"contents": "write"} and job["environment"] == "release"
    parser = build_parser()
    for step in job["steps"]:
        for line in str(step.get("run", "")).splitlines():
            if line.strip().startswith(".venv/bin/st-retrofit"):
                args = shlex.split(line.replace("$NAME", "retrofit-300m").replace("$REPO", "org/name"))[1:]
                parser.parse_args(args)  # exits on an unknown command or option

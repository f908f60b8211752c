"""The package as users get it: a wheel and an sdist built by ``python -m build``, installed into a fresh virtual
environment that already has a torch build of its own, which the install must keep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import venv
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_torch_is_a_range_and_the_core_needs_no_extra():
    dependencies = PYPROJECT["project"]["dependencies"]
    torch = [d for d in dependencies if d.startswith("torch")]
    assert torch and "==" not in torch[0]
    extras = PYPROJECT["project"]["optional-dependencies"]
    core = " ".join(dependencies)
    for package in ("mteb", "faiss", "openai", "matplotlib", "datasketch", "py3langid", "peft"):
        assert package not in core, package
    assert {"lora", "synth", "eval", "faiss", "plots", "offline", "dev", "all"} <= set(extras)


def test_every_import_of_an_optional_package_names_its_extra():
    from st_retrofit.extras import EXTRAS

    extras = PYPROJECT["project"]["optional-dependencies"]
    for module, extra in EXTRAS.items():
        assert any(module.replace("_", "-") in requirement for requirement in extras[extra]), module


def test_every_module_the_tests_import_is_declared():
    """scipy and PIL were imported by tests without being declared."""
    dev = " ".join(PYPROJECT["project"]["optional-dependencies"]["dev"])
    assert "scipy" in dev and "pillow" in dev and "pytest" in dev


def _run(command: list[str], cwd: Path, env: dict | None = None) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env, timeout=1500)
    assert result.returncode == 0, f"{' '.join(map(str, command))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_keeps_its_torch_and_runs_a_stage(tmp_path, tiny_model_path):
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--wheel", "--sdist", "--outdir", str(dist)], REPO)
    wheel = next(dist.glob("st_retrofit-*.whl"))
    assert next(dist.glob("st_retrofit-*.tar.gz"))

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    torch = f"torch=={version('torch')}"  # the build this machine has (a user's CUDA build in real life)
    _run([str(python), "-m", "pip", "install", "--quiet", torch], tmp_path)
    _run([str(python), "-m", "pip", "install", "--quiet", f"{wheel}[all]"], tmp_path)
    _run([str(python), "-m", "pip", "check"], tmp_path)
    installed = _run([str(python), "-c", "import torch, st_retrofit; print(torch.__version__, st_retrofit.__file__)"],
                     tmp_path).split()  # fmt: skip
    assert installed[0] == version("torch")
    assert Path(installed[1]).is_relative_to(env_dir)  # the installed package, not this checkout

    recipe = {
        "name": "from-wheel",
        "output_dir": str(tmp_path / "runs"),
        "model": {"base": str(tiny_model_path)},
        "synth": {"languages": ["en", "de"], "train_entities": 6, "eval_entities": 2},
        "mining": {"teacher": str(tiny_model_path), "num_negatives": 1, "relative_margin": None},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cli = str(env_dir / "bin" / "st-retrofit")
    _run([cli, "run", "recipe.yaml", "--stages", "synth,mine"], tmp_path, env)
    report = json.loads((tmp_path / "runs" / "from-wheel" / "mine" / "report.json").read_text())
    assert report["rows_out"] > 0
    schema = json.loads(_run([cli, "schema"], tmp_path, env))
    assert "mining" in schema["properties"]

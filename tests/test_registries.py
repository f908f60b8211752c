"""Registries: a named kind is a class that owns its behaviour, and a user's package adds one without editing ours."""

from __future__ import annotations

import importlib
import json
import re
import sys
import textwrap
from pathlib import Path

import pytest

import st_retrofit
from st_retrofit.config import ConfigError
from st_retrofit.mining.config import MiningConfig, SearchConfig
from st_retrofit.mining.search_backends import SEARCH_BACKENDS
from st_retrofit.recipe import recipe_schema
from st_retrofit.registry import Kind, Registry

PACKAGE = Path(st_retrofit.__file__).parent

# A user's package: a brute-force numpy searcher registered as mining.search.backend "brute".
USER_PACKAGE = """
import numpy as np

from st_retrofit.mining.search_backends import SEARCH_BACKENDS, SearchBackend

CALLS = []


class BruteForceSearcher:
    def __init__(self, corpus):
        self.vectors = corpus.read(0, len(corpus)).astype(np.float32)

    def search(self, queries, k):
        CALLS.append(len(queries))
        scores = queries.astype(np.float32) @ self.vectors.T
        ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, ids, axis=1), ids.astype(np.int64)


@SEARCH_BACKENDS.register
class BruteForce(SearchBackend):
    name = "brute"
    description = "every query against every vector, in numpy"

    def build(self, corpus, config, seed=0, index_path=None):
        return BruteForceSearcher(corpus)
"""


@pytest.fixture
def user_search_backend(tmp_path, monkeypatch):
    (tmp_path / "my_search.py").write_text(textwrap.dedent(USER_PACKAGE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(SEARCH_BACKENDS, "_kinds", dict(SEARCH_BACKENDS._kinds))  # unregistered after the test
    module = importlib.import_module("my_search")
    yield module
    sys.modules.pop("my_search", None)


def test_a_search_backend_registered_from_a_users_package_mines_like_the_exact_one(
    user_search_backend, tiny_model, tmp_path
):
    from st_retrofit.mining import mine_negatives
    from st_retrofit.synth import build_demo_dataset

    pairs = build_demo_dataset(languages=["en", "ru"], train_entities=8, eval_entities=2, seed=3)["train"]
    settings = {"num_negatives": 2, "relative_margin": None}
    theirs, report = mine_negatives(pairs, tiny_model, MiningConfig(**settings, search={"backend": "brute"}))
    ours, _ = mine_negatives(pairs, tiny_model, MiningConfig(**settings, search={"backend": "exact"}))
    assert user_search_backend.CALLS, "the miner did not search with the registered backend"
    assert {split: rows.to_list() for split, rows in theirs.items()} == {s: r.to_list() for s, r in ours.items()}
    assert {group["search"] for group in report["groups"].values()} == {"brute"}


def test_a_registered_name_is_valid_in_the_recipe_and_listed_by_the_schema(user_search_backend):
    assert SearchConfig(backend="brute").backend == "brute"
    schema = recipe_schema()
    assert "brute" in schema["$defs"]["SearchConfig"]["properties"]["backend"]["enum"]


def test_an_unknown_name_names_its_key_and_the_close_match():
    with pytest.raises(ConfigError, match=r"^search\.backend: unknown search backend 'hnws' \(did you mean hnsw\?\)$"):
        MiningConfig(search={"backend": "hnws"})
    with pytest.raises(ConfigError, match=r"^output: unknown mining output layout 'tuple' \(did you mean n-tuple\?\)"):
        MiningConfig(output="tuple")
    with pytest.raises(ConfigError, match=r"^backend: unknown encoder backend 'xla'; registered: torch, onnx"):
        MiningConfig(backend="xla")


def test_a_kind_must_subclass_the_registrys_base_and_say_what_it_is():
    registry = Registry("thing", Kind)

    class Nameless(Kind):
        description = "no name"

    with pytest.raises(TypeError, match="needs a name and a description"):
        registry.register(Nameless)
    with pytest.raises(TypeError, match="must subclass"):
        Registry("search backend", SEARCH_BACKENDS.base).register(
            type("Other", (Kind,), {"name": "x", "description": "y"})
        )


def test_every_kind_checks_the_modules_it_needs(monkeypatch):
    from st_retrofit import extras

    real = extras.importlib.import_module

    def no_faiss(name, *args):
        if name.split(".")[0] == "faiss":
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(extras.importlib, "import_module", no_faiss)
    for name in ("flat", "ivf", "hnsw"):
        with pytest.raises(ConfigError, match=r"pip install 'st-retrofit\[faiss\]'"):
            SEARCH_BACKENDS[name].check_environment()
    for name in ("auto", "exact"):
        SEARCH_BACKENDS[name].check_environment()


def test_installed_says_whether_a_kinds_modules_import(monkeypatch):
    from st_retrofit import extras

    real = extras.importlib.util.find_spec
    monkeypatch.setattr(
        extras.importlib.util, "find_spec", lambda name, *a: None if name == "faiss" else real(name, *a)
    )
    assert [name for name, kind in SEARCH_BACKENDS.items() if not kind.installed()] == ["flat", "ivf", "hnsw"]


# Kinds chosen by registry lookups, never by comparing their names: a comparison of a search or encoder backend,
# an output layout, a merge method, a synth backend type or a template kind with a string literal is a switch that
# a registered kind could not join.
COMPARISON = re.compile(r"""(?<!device)\.(backend|output|method|type|kind)\s*(==|!=|\bin\b|\bnot in\b)\s*[\"'(\[{]""")


def test_no_kind_of_these_registries_is_chosen_by_a_string_comparison():
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if COMPARISON.search(line)
    ]
    assert not found, "\n".join(found)


def test_the_grep_finds_a_switch():
    assert COMPARISON.search('if cfg.output == "pool":')
    assert COMPARISON.search("elif config.search.backend in ('flat', 'ivf'):")
    assert COMPARISON.search('heuristic = config.backend.type == "heuristic"')
    assert COMPARISON.search('if self.method == "slerp":')
    assert COMPARISON.search('return self._heuristic if template.kind == "heuristic" else self.backend')
    assert not COMPARISON.search("layout = OUTPUT_LAYOUTS[cfg.output]")
    assert not COMPARISON.search('if model.device.type != "cpu":')  # a torch device, no kind


def test_the_merge_method_of_the_architecture_docs_merges_and_is_a_valid_recipe_value(tiny_model, monkeypatch):
    import copy

    import torch

    from st_retrofit.merge.config import MergeConfig
    from st_retrofit.merge.methods import MERGE_METHODS, merge_models

    monkeypatch.setattr(MERGE_METHODS, "_kinds", dict(MERGE_METHODS._kinds))
    docs = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = re.search(r"```python\n(.*?MERGE_METHODS\.register.*?)```", docs, re.S).group(1)
    exec(compile(block, "docs/architecture.md", "exec"), {})

    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(torch.randn_like(parameter))
    merged = merge_models([tiny_model, other], "elementwise-max")
    for key, tensor in merged.state_dict().items():
        assert torch.equal(tensor, torch.maximum(tiny_model.state_dict()[key], other.state_dict()[key])), key
    assert MergeConfig(method="elementwise-max", models=["base"]).method == "elementwise-max"
    with pytest.raises(ConfigError, match="merges exactly 2 models"):
        MergeConfig(method="elementwise-max", models=["base", "runs/other"])
    assert "elementwise-max" in json.dumps(recipe_schema()["$defs"]["MergeConfig"])

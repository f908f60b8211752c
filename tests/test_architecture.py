"""The package's shape: no import cycles, stages never import the recipe, light imports, registries, one error
type, deprecated names that still load."""

from __future__ import annotations

import ast
import graphlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import st_retrofit
from st_retrofit.config import ConfigError
from st_retrofit.recipe import recipe_from_dict

PACKAGE = Path(st_retrofit.__file__).parent
REPO = PACKAGE.parent
STAGE_PACKAGES = (
    "synth", "data", "mining", "mixing", "train", "evaluation", "publish", "losses", "models", "merge", "export",
    "offline",
)  # fmt: skip


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every st_retrofit module ``path`` imports at run time (module level or inside functions; imports for type
    checkers only are left out), with the packages each import loads on the way."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            names = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names = [child.module] + [f"{child.module}.{alias.name}" for alias in child.names]
            for name in names:
                if name.startswith("st_retrofit"):
                    parts = name.split(".")
                    found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        # A module's own packages are already being imported when it runs (Python's normal package layout); an
        # edge to them is no cycle.
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        graph[name] = _imports(path, set(files)) - ancestors - {name}
    return graph


def test_the_package_has_no_import_cycles():
    try:
        order = list(graphlib.TopologicalSorter(import_graph()).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")
    assert "st_retrofit.recipe" in order and "st_retrofit.config" in order


# The layering, lowest first: a package imports only packages of lower layers (the foundation's modules and the
# entry points at the top excepted, which import within their own layer). Shared helpers live in the foundation:
# text (languages, normalization) and files (atomic writes, the cache folder); dataio reads data for every stage.
LAYERS = [
    {"config", "registry", "files", "text", "extras", "_lazy", "tables", "distributed", "runfolder", "offline"},
    {"models", "losses"},
    {"dataio"},
    {"export"},
    {"synth", "data"},
    {"mining"},
    {"mixing"},
    {"merge", "evaluation"},
    {"train"},
    {"publish"},
    {"recipe", "pipeline", "ablate", "cli", "__main__"},
]


def _layer(module: str) -> tuple[int, str]:
    top = module.split(".")[1] if "." in module else "__init__"
    found = [i for i, layer in enumerate(LAYERS) if top in layer]
    assert found or top == "__init__", f"{module}: {top} is in no layer of LAYERS; add it"
    return (found[0] if found else len(LAYERS), top)


def _against_the_layering(graph: dict[str, set[str]]) -> list[str]:
    against = []
    for module, deps in graph.items():
        level, package = _layer(module)
        for dep in deps:
            dep_level, dep_package = _layer(dep)
            if dep_package != package and dep_level >= level and level not in (0, len(LAYERS) - 1, len(LAYERS)):
                against.append(f"{module} -> {dep}")
    return against


def test_every_package_imports_only_packages_below_it():
    against = _against_the_layering(import_graph())
    assert not against, "\n".join(against)


def test_the_layer_check_finds_an_import_against_the_layering():
    graph = import_graph()
    graph["st_retrofit.synth.validation"] = graph["st_retrofit.synth.validation"] | {"st_retrofit.mining.filters"}
    assert _against_the_layering(graph) == ["st_retrofit.synth.validation -> st_retrofit.mining.filters"]


def test_the_cycle_check_finds_a_cycle(monkeypatch):
    graph = import_graph()
    graph["st_retrofit.config"] = graph["st_retrofit.config"] | {"st_retrofit.recipe"}
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(graph).static_order())


def test_no_stage_module_imports_the_recipe():
    offenders = {
        name: sorted(deps & {"st_retrofit.recipe", "st_retrofit.pipeline", "st_retrofit.cli"})
        for name, deps in import_graph().items()
        if name.split(".")[1:2] and name.split(".")[1] in STAGE_PACKAGES
    }
    assert {name: deps for name, deps in offenders.items() if deps} == {}


def test_the_offline_carriers_and_the_benchmark_builder_stay_out_of_the_core_path():
    # Only the offline: name resolver and the benchmark command reach them, and only when asked for.
    importers = {
        name
        for name, deps in import_graph().items()
        if not name.startswith("st_retrofit.offline") and any(d.startswith("st_retrofit.offline") for d in deps)
    }
    assert importers == {"st_retrofit.models.resolve", "st_retrofit.cli"}


def test_each_stage_package_owns_its_config():
    for package in ("synth", "data", "mining", "mixing", "train", "evaluation", "publish", "models", "merge"):
        assert (PACKAGE / package / "config.py").is_file(), package
    recipe_lines = len((PACKAGE / "recipe.py").read_text().splitlines())
    assert recipe_lines < 200


def _modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


HEAVY = {"torch", "transformers", "sentence_transformers", "datasets", "peft", "mteb", "faiss", "openai"}


def test_importing_the_package_the_recipe_and_the_cli_loads_no_torch():
    loaded = _modules_after("import st_retrofit, st_retrofit.recipe, st_retrofit.cli\nst_retrofit.cli.build_parser()")
    assert loaded & HEAVY == set()


def test_validating_loads_only_what_its_checks_need():
    loaded = _modules_after(
        "from st_retrofit.cli import main\nassert main(['validate', 'recipes/quickstart.yaml']) == 0"
    )
    # The trainer's argument class is how train.args are checked; nothing of the miner, mteb or the LLM clients.
    assert "sentence_transformers" in loaded
    assert loaded & {"mteb", "faiss", "openai", "datasketch", "matplotlib"} == set()
    assert not {m for m in loaded if m.startswith(("st_retrofit.mining.miner", "st_retrofit.synth.backends."))}


def test_a_lazy_export_resolves_on_first_use():
    assert st_retrofit.RetrofitInfoNCELoss.__name__ == "RetrofitInfoNCELoss"
    assert "load_recipe" in dir(st_retrofit)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = st_retrofit.nothing


# ----------------------------------------------------------------------------------------------------------------
# Registries


def test_every_synth_backend_kind_builds_its_class():
    from st_retrofit.synth.backend_kinds import SYNTH_BACKENDS
    from st_retrofit.synth.backends.base import SynthBackend
    from st_retrofit.synth.config import BackendConfig

    assert SYNTH_BACKENDS.names() == ["heuristic", "openai", "transformers"]
    for name in SYNTH_BACKENDS:
        config = BackendConfig(type=name, model="some-model")
        assert issubclass(config.backend_class(), SynthBackend)
        assert config.kind is SYNTH_BACKENDS[name]
    assert BackendConfig().build().identity() == {"kind": "heuristic"}
    with pytest.raises(ConfigError, match="^model: the openai backend needs the model name"):
        BackendConfig(type="openai")


def test_every_synth_source_is_registered():
    from st_retrofit.synth.config import SynthConfig
    from st_retrofit.synth.demo import build_demo_dataset
    from st_retrofit.synth.generator import OUTPUT_COLUMNS
    from st_retrofit.synth.source_kinds import SYNTH_SOURCES

    assert SYNTH_SOURCES.names() == ["demo", "corpus"]
    assert SynthConfig(source="corpus", corpus={"path": "docs.jsonl"}).source_entry is SYNTH_SOURCES["corpus"]
    # The columns a recipe check knows without importing the generator are the ones the sources write.
    assert SYNTH_SOURCES["corpus"].columns == OUTPUT_COLUMNS
    demo = build_demo_dataset(languages=["en"], train_entities=2, eval_entities=2)["train"]
    assert SYNTH_SOURCES["demo"].columns == tuple(demo.column_names)


def test_a_users_subclass_of_our_loss_keeps_its_task_ids(tiny_recipe_data, tiny_model, monkeypatch):
    from sentence_transformers.sentence_transformer import losses

    from st_retrofit.losses import RetrofitInfoNCELoss
    from st_retrofit.train import build_collator

    class MyLoss(RetrofitInfoNCELoss):  # defined outside st_retrofit, as a user's would be
        pass

    monkeypatch.setattr(losses, "MyLoss", MyLoss, raising=False)
    recipe = recipe_from_dict({**tiny_recipe_data, "train": {"loss": "MyLoss"}})
    assert MyLoss.__module__ == __name__
    assert build_collator(recipe, tiny_model).labels == "dict"


# ----------------------------------------------------------------------------------------------------------------
# One error type, deprecated names


def test_one_error_type_rekeys_with_under():
    error = ConfigError("r", "expected >= 1").under("lora").under("model")
    assert str(error) == "model.lora.r: expected >= 1" and error.key == "model.lora.r"
    assert ConfigError("", "bad").under("eval.mteb_tasks[0]").key == "eval.mteb_tasks[0]"
    assert ConfigError("[2].path", "x").under("data.sources").key == "data.sources[2].path"


def test_every_error_a_user_can_fix_has_one_root_and_rekeys_in_one_line():
    """Each exception class the package defines derives from StRetrofitError (which the CLI prints as one line),
    but the one for bugs; re-keying an error is ``with keyed(...)``, not the except/raise idiom written out."""
    import importlib

    from st_retrofit.config import StRetrofitError, keyed

    bugs = {"UndeclaredSectionError"}  # a stage reading a section it does not declare: a bug, keeps its traceback
    defined = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and any(
                getattr(base, "id", "").endswith(("Error", "Exception"))
                or getattr(base, "id", "") == "StRetrofitError"
                for base in node.bases
            ):
                defined.append((_module_name(path), node.name))
    assert len(defined) >= 10
    for module, name in defined:
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, StRetrofitError) or name in bugs, (
            f"{module}.{name} does not derive from StRetrofitError"
        )
    written_out = [p.name for p in PACKAGE.rglob("*.py") if "raise exc.under(" in p.read_text(encoding="utf-8")]
    assert written_out == ["config.py"], written_out  # keyed() itself
    with pytest.raises(ConfigError, match=r"^mining\.teacher: no such model$"), keyed("mining"):
        raise ConfigError("teacher", "no such model")


def test_a_section_built_from_python_fails_with_the_same_error():
    from st_retrofit.mining import MiningConfig

    with pytest.raises(ConfigError, match=r"^num_negatives: expected >= 1, got 0$"):
        MiningConfig(num_negatives=0)
    with pytest.raises(ConfigError, match=r"^relative_margn: unknown key \(did you mean relative_margin\?\)$"):
        MiningConfig(relative_margn=0.1)


def test_old_mixing_keys_load_with_a_warning_naming_the_new_key(tiny_recipe_data):
    data = {**tiny_recipe_data, "mixing": {"rank_min": 1, "rank_max": 4, "sampling": "uniform"}}
    with pytest.warns(FutureWarning, match="'rank_max' is now 'range_max'"):
        recipe = recipe_from_dict(data)
    assert (recipe.mixing.range_min, recipe.mixing.range_max, recipe.mixing.sampling) == (1, 4, "random")


def test_an_old_and_a_new_key_together_are_refused(tiny_recipe_data):
    with pytest.raises(ConfigError, match="^mixing.rank_max: is the old name of range_max"):
        with pytest.warns(FutureWarning):
            recipe_from_dict({**tiny_recipe_data, "mixing": {"rank_max": 4, "range_max": 5}})


def test_mine_negatives_still_takes_cache_folder(tiny_model, tmp_path):
    from st_retrofit.mining import mine_negatives
    from st_retrofit.mining.config import MiningConfig
    from st_retrofit.synth import build_demo_dataset

    pairs = build_demo_dataset(languages=["en"], train_entities=8, eval_entities=2, seed=0)["train"]
    with pytest.warns(FutureWarning, match="cache_dir"):
        mine_negatives(pairs, tiny_model, MiningConfig(num_negatives=1, group_by=None), cache_folder=tmp_path / "c")
    assert any((tmp_path / "c").iterdir())


# ----------------------------------------------------------------------------------------------------------------
# Schema


def test_schema_command_prints_the_json_schema_of_a_recipe(capsys):
    from st_retrofit.cli import main

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert set(schema["properties"]) >= {"model", "synth", "data", "mining", "mixing", "train", "eval", "publish"}


def test_shipped_recipes_point_editors_at_the_committed_schema():
    import jsonschema

    from st_retrofit.recipe import recipe_schema

    committed = REPO / "recipes" / "recipe.schema.json"
    assert json.loads(committed.read_text()) == recipe_schema(), "regenerate: st-retrofit schema > " + str(committed)
    validator = jsonschema.Draft202012Validator(recipe_schema())
    recipes = sorted((REPO / "recipes").glob("*.yaml"))
    assert recipes
    for path in recipes:
        first = path.read_text().splitlines()[0]
        assert first == "# yaml-language-server: $schema=recipe.schema.json", path.name
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert errors == [], path.name


def test_the_schema_flags_what_validation_refuses():
    import jsonschema

    from st_retrofit.recipe import recipe_schema

    validator = jsonschema.Draft202012Validator(recipe_schema())
    assert list(validator.iter_errors({"mining": {"relative_margn": 0.1}}))
    assert list(validator.iter_errors({"mining": {"relative_margin": 1.5}}))
    assert not list(validator.iter_errors({"mining": {"relative_margin": 0.1}}))


# ----------------------------------------------------------------------------------------------------------------
# Extras


def test_a_missing_extra_is_named_before_any_work(tiny_recipe_data, tmp_path, monkeypatch):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    monkeypatch.setitem(sys.modules, "mteb", None)  # import mteb now raises ImportError
    with pytest.raises(ConfigError) as info:
        recipe_from_dict({**tiny_recipe_data, "eval": {"mteb_tasks": [str(folder)]}})
    assert info.value.key == "eval.mteb_tasks[0]"
    assert "pip install 'st-retrofit[eval]'" in str(info.value)


def test_plots_are_skipped_with_a_warning_without_matplotlib(tmp_path, monkeypatch, caplog):
    from st_retrofit.mining.report import plot_score_distributions

    monkeypatch.setattr("st_retrofit.extras.has_module", lambda name: name != "matplotlib")
    report = {"histogram": {"edges": [0, 0.5, 1], "positive": [1, 2], "negative": [2, 1]}}
    assert plot_score_distributions(report, tmp_path / "s.png") is None
    assert "st-retrofit[plots]" in caplog.text
    assert not (tmp_path / "s.png").exists()


def test_the_run_folder_layout_is_spelled_in_one_place():
    """What one stage writes and another reads is a runfolder.Output; no other module joins a stage's folder name
    and a file name of it by hand."""
    import re

    stage_path = re.compile(r"""/\s*["'](synth|mine|train|eval|publish)["']\s*/""")
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in sorted([*PACKAGE.rglob("*.py"), *(REPO / "benchmarks").glob("*.py")])
        if path.name != "runfolder.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if stage_path.search(line)
    ]
    assert not found, "\n".join(found)

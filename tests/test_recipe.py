from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from st_retrofit.config import ConfigError
from st_retrofit.recipe import Recipe, load_recipe, recipe_from_dict, save_recipe

REPO = Path(__file__).resolve().parents[1]

# (description, patch applied to the tiny recipe, key the error must name, text the message must contain)
BAD_RECIPES = [
    ("misspelled key", {"mining": {"relative_margn": 0.1}}, "mining.relative_margn", "did you mean relative_margin"),
    ("unknown section", {"minning": {}}, "minning", "did you mean mining"),
    ("string for a float", {"mining": {"relative_margin": "5%"}}, "mining.relative_margin", "expected a number"),
    ("bool for an int", {"mining": {"num_negatives": True}}, "mining.num_negatives", "expected an integer"),
    ("out of range", {"mining": {"relative_margin": 1.5}}, "mining.relative_margin", "[0, 1)"),
    ("range_max too small", {"mining": {"range_max": 1}}, "mining.range_max", "range_min + num_negatives"),
    (
        "two names for one rule",
        {"mining": {"relative_margin": 0.05, "max_positive_ratio": 0.95}},
        "mining.max_positive_ratio",
        "set one of them",
    ),
    (
        "ratio out of range",
        {"mining": {"relative_margin": None, "max_positive_ratio": 0}},
        "mining.max_positive_ratio",
        "(0, 1]",
    ),
    (
        "bad search backend",
        {"mining": {"search": {"backend": "annoy"}}},
        "mining.search.backend",
        "registered: auto, exact, flat, ivf, hnsw",
    ),
    ("nested search key", {"mining": {"search": {"n_probe": 8}}}, "mining.search.n_probe", "did you mean nprobe"),
    ("min above max score", {"mining": {"max_score": 0.5, "min_score": 0.6}}, "mining.min_score", "below max_score"),
    ("bad output", {"mining": {"output": "triplet"}}, "mining.output", "registered: n-tuple, pool"),
    ("missing cross-encoder", {"mining": {"cross_encoder": "./no/ce"}}, "mining.cross_encoder", "does not exist"),
    ("list item type", {"synth": {"languages": ["en", 3]}}, "synth.languages[1]", "expected a string"),
    ("unknown language", {"synth": {"languages": ["en", "xx"]}}, "synth.languages", "unknown language"),
    (
        "bad source",
        {"synth": {"source": "web"}},
        "synth.source",
        "unknown synth source 'web'; registered: demo, corpus",
    ),
    ("section not a mapping", {"eval": 5}, "eval", "expected a mapping"),
    ("nested lora key", {"model": {"lora": {"rank": 4}}}, "model.lora.rank", "unknown key"),
    ("unknown offline model", {"model": {"base": "offline:e5-huge"}}, "model.base", "offline:multilingual-e5-small"),
    ("missing model folder", {"model": {"base": "./no/such/model"}}, "model.base", "does not exist"),
    ("uncached hub id offline", {"mining": {"teacher": "BAAI/bge-m3"}}, "mining.teacher", "not in the local cache"),
    ("unknown loss", {"train": {"loss": "MultipleNegativesRankingLos"}}, "train.loss", "did you mean"),
    ("unknown loss arg", {"train": {"loss_kwargs": {"scal": 100}}}, "train.loss_kwargs.scal", "did you mean scale"),
    ("model as loss arg", {"train": {"loss_kwargs": {"model": "x"}}}, "train.loss_kwargs.model", "not an argument"),
    ("unknown trainer arg", {"train": {"args": {"num_epochs": 2}}}, "train.args.num_epochs", "not an argument"),
    ("output_dir in args", {"train": {"args": {"output_dir": "x"}}}, "train.args.output_dir", "set by the run"),
    ("mixing key typo", {"mixing": {"alfa": 0.5}}, "mixing.alfa", "did you mean alpha"),
    ("alpha out of range", {"mixing": {"alpha": 2}}, "mixing.alpha", "[0, 1]"),
    ("negative weight", {"mixing": {"weights": {"en": -1}}}, "mixing.weights.en", "> 0"),
    ("fractional cap", {"mixing": {"caps": {"en": 0.5}}}, "mixing.caps.en", "integer >= 1"),
    ("empty rank range", {"mixing": {"range_min": 3, "range_max": 3}}, "mixing.range_max", "> range_min"),
    ("bad sampling", {"mixing": {"sampling": "hardest"}}, "mixing.sampling", "'teacher'"),
    ("prompt not a string", {"mixing": {"prompts": {"qa": 3}}}, "mixing.prompts.qa", "expected a string"),
    ("push without repo", {"publish": {"repo_id": None, "dry_run": False}}, "publish.repo_id", "required"),
    ("bad repo id", {"publish": {"repo_id": "a/b/c"}}, "publish.repo_id", "org/name"),
    ("missing card template", {"publish": {"card_template": "nope.md"}}, "publish.card_template", "does not exist"),
]


def _merge(base: dict, patch: dict) -> dict:
    out = dict(base)
    for key, value in patch.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


@pytest.mark.parametrize(("description", "patch", "key", "text"), BAD_RECIPES, ids=[c[0] for c in BAD_RECIPES])
def test_bad_recipe_error_names_the_key(tiny_recipe_data, description, patch, key, text):
    with pytest.raises(ConfigError) as info:
        recipe_from_dict(_merge(tiny_recipe_data, patch))
    assert info.value.key == key
    assert text in str(info.value)
    assert "\n" not in str(info.value)


def test_valid_recipe_builds_typed_sections(tiny_recipe_data):
    recipe = recipe_from_dict(tiny_recipe_data)
    assert recipe.mining.num_negatives == 2
    assert recipe.model.lora.target_modules == ["query", "value"]
    assert recipe.run_dir == Path(tiny_recipe_data["output_dir"]) / "tiny"


def test_integer_accepted_where_a_float_is_expected(tiny_recipe_data):
    recipe = recipe_from_dict(_merge(tiny_recipe_data, {"model": {"lora": {"dropout": 0}}}))
    assert isinstance(recipe.model.lora.dropout, float)


def test_null_lora_means_full_fine_tuning(tiny_recipe_data):
    recipe = recipe_from_dict(_merge(tiny_recipe_data, {"model": {"lora": None}}))
    assert recipe.model.lora is None


def test_overrides_are_parsed_as_yaml_values(tiny_recipe_data):
    recipe = recipe_from_dict(tiny_recipe_data, ["mining.num_negatives=5", "synth.languages=[en, de]"])
    assert recipe.mining.num_negatives == 5
    assert recipe.synth.languages == ["en", "de"]
    assert tiny_recipe_data["mining"]["num_negatives"] == 2


def test_override_with_an_unknown_key_is_rejected(tiny_recipe_data):
    with pytest.raises(ConfigError, match="mining.num_negative: unknown key"):
        recipe_from_dict(tiny_recipe_data, ["mining.num_negative=5"])


def test_missing_recipe_file_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "absent.yaml")


def test_invalid_yaml_is_reported(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(path)


def test_recipe_round_trips_through_yaml(tiny_recipe_data, tmp_path):
    recipe = recipe_from_dict(tiny_recipe_data)
    save_recipe(recipe, tmp_path / "saved.yaml")
    assert load_recipe(tmp_path / "saved.yaml") == recipe


def test_section_hash_changes_only_with_its_sections(tiny_recipe_data):
    recipe = recipe_from_dict(tiny_recipe_data)
    changed = recipe_from_dict(tiny_recipe_data, ["eval.k=3"])
    assert recipe.section_hash("mining") == changed.section_hash("mining")
    assert recipe.section_hash("eval") != changed.section_hash("eval")


# The man-page recipes read a benchmark built first; tests/test_manpages.py validates them beside a miniature one.
@pytest.mark.parametrize(
    "path",
    sorted(p for p in (REPO / "recipes").glob("*.yaml") if not p.name.startswith("manpages")),
    ids=lambda p: p.name,
)
def test_every_shipped_recipe_loads(path, monkeypatch):
    # Hub ids are checked for their form; with HF_HUB_OFFLINE=1 they would have to be in the local cache.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.chdir(REPO)  # recipes name their files relative to the repository root
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert yaml.safe_load(path.read_text())["name"] == recipe.name


@pytest.mark.parametrize(
    "path",
    # The man-page ablations need the built benchmark: tests/test_manpages.py validates them beside a miniature one.
    sorted(p for p in (REPO / "recipes" / "ablations").glob("*.yaml") if not p.name.startswith("manpages-")),
    ids=lambda p: p.name,
)
def test_every_shipped_ablation_validates_all_its_variants(path, monkeypatch):
    from st_retrofit.ablate import load_ablation, variant_recipes

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.chdir(REPO)
    ablation = load_ablation(path)
    recipes = variant_recipes(ablation)
    assert len(recipes) == len(ablation.x.values) * (len(ablation.series.values) if ablation.series else 1) >= 3
    assert len({r.run_dir for *_, r in recipes}) == len(recipes)


def test_the_300m_recipe_documents_where_each_hyperparameter_comes_from():
    text = (REPO / "recipes" / "retrofit-300m.yaml").read_text()
    data = yaml.safe_load(text)
    assert data["mining"]["teacher"] != data["model"]["base"]  # a stronger backbone mines
    assert data["data"]["sources"] and data["synth"]["source"] == "corpus"
    lines = text.splitlines()
    for key in ("base:", "max_per_language:", "learning_rate:", "per_device_train_batch_size:", "scale:", "teacher:"):
        i = next(i for i, line in enumerate(lines) if line.strip().startswith(key))
        sourced = any(tag in "".join(lines[i - 2 : i + 1]) for tag in ("[paper]", "[field]", "[ours]"))
        assert sourced, f"{key} says nowhere whether it comes from the paper, the field or us"


def test_mixing_group_by_accepts_one_name_or_a_list(tiny_recipe_data):
    assert recipe_from_dict({**tiny_recipe_data, "mixing": {"group_by": "language"}}).mixing.group_by == ["language"]
    both = recipe_from_dict({**tiny_recipe_data, "mixing": {"group_by": ["dataset", "task"]}})
    assert both.mixing.group_by == ["dataset", "task"]


@pytest.mark.parametrize(("written", "value"), [("2e-5", 2e-5), ("1.0e5", 1e5), ("-3E+2", -300.0), ("1_000", 1000)])
def test_floats_without_a_dot_are_numbers_in_recipes_and_overrides(written, value):
    # PyYAML (YAML 1.1) reads 2e-5 as a string; recipes follow YAML 1.2, as every other parser does.
    from st_retrofit.config import load_yaml
    from st_retrofit.recipe import set_override

    assert load_yaml(f"learning_rate: {written}", "recipe") == {"learning_rate": value}
    data: dict = {}
    set_override(data, f"train.args.learning_rate={written}")
    assert data == {"train": {"args": {"learning_rate": value}}}
    assert load_yaml(f"name: '{written}'", "recipe") == {"name": written}  # quoted stays a string

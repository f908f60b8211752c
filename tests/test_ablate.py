"""`st-retrofit ablate`: a grid of recipe variants run through the pipeline, a table and a plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from st_retrofit.ablate import load_ablation, variant_recipes
from st_retrofit.cli import main
from st_retrofit.config import ConfigError


@pytest.fixture
def base_recipe(tiny_recipe_data, tmp_path):
    path = tmp_path / "recipes" / "tiny.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(tiny_recipe_data))
    return path


def write_ablation(base_recipe, **fields):
    data = {"name": "Hard negatives", "base": "tiny.yaml", "metric": "ndcg", **fields}
    path = base_recipe.parent / "ablation.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


GRID = {
    "set": {"train.args.num_train_epochs": 1},
    "x": {"label": "negatives", "values": [
        {"label": "in-batch only", "set": {"mining.enabled": False}},
        {"label": "mined", "set": {"mining.enabled": True}},
    ]},
    "series": {"label": "train entities", "key": "synth.train_entities", "values": [8, 12]},
}  # fmt: skip


def test_an_ablation_runs_every_variant_and_writes_a_table_and_a_plot(base_recipe, tmp_path, capsys):
    path = write_ablation(base_recipe, **GRID)
    assert main(["ablate", str(path)]) == 0
    folder = tmp_path / "runs" / "hard-negatives"
    summary = json.loads((folder / "results.json").read_text())
    assert [(r["series"], r["x"]) for r in summary["rows"]] == [
        ("8", "in-batch only"), ("8", "mined"), ("12", "in-batch only"), ("12", "mined")
    ]  # fmt: skip
    assert all(0 <= r["retrofitted"]["ndcg"] <= 1 for r in summary["rows"])
    # Each variant is its own run with its own settings.
    mined = json.loads((folder / "8__mined" / "mine" / "report.json").read_text())
    in_batch = json.loads((folder / "8__in-batch-only" / "mine" / "report.json").read_text())
    assert mined.get("enabled", True) is True and in_batch == {"enabled": False}
    assert yaml.safe_load((folder / "12__mined" / "recipe.yaml").read_text())["synth"]["train_entities"] == 12
    with Image.open(folder / "ndcg.png") as image:
        assert image.size[0] > 500
    out = capsys.readouterr().out
    assert "| train entities | negatives | base ndcg | retrofitted ndcg | Δ |" in out

    # Run again: every stage of every variant is up to date, so nothing is recomputed.
    stamps = {p: p.stat().st_mtime_ns for p in folder.glob("*/train/stage.json")}
    assert main(["ablate", str(path)]) == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in folder.glob("*/train/stage.json")}


def test_every_variant_is_validated_before_any_runs(base_recipe, tmp_path, capsys):
    grid = {**GRID, "series": {"label": "bad", "key": "mining.num_negatives", "values": [2, 0]}}
    path = write_ablation(base_recipe, **grid)
    assert main(["ablate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "mining.num_negatives: expected >= 1, got 0 (in variant 0__in-batch-only)" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"x": {"values": [1, 2]}}, "x.key"),
        ({"x": {"key": "seed", "values": []}}, "x.values"),
        ({"x": {"key": "seed", "values": [1]}, "metric": "bleu"}, "metric"),
        ({"x": {"key": "seed", "values": [1]}, "sets": {}}, "sets"),
        ({"x": {"values": [{"label": "a", "overrides": {}}]}}, "x.values[0].overrides"),
        ({"x": {"values": [{"label": "a"}]}}, "x.values[0].set"),
        ({"x": {"key": "seed", "values": [1]}, "soup": "some"}, "soup"),
        ({"x": {"key": "seed", "values": ["a b", "a-b"]}}, "x.values"),
        ({"x": {"key": "seed", "values": [1]}, "tasks": ""}, "tasks"),
        ({"x": {"key": "seed", "values": [1]}, "tasks": "*-dev", "metric": "mrr"}, "metric"),
    ],
)
def test_bad_ablation_files_name_the_key(base_recipe, fields, key):
    with pytest.raises(ConfigError) as info:
        load_ablation(write_ablation(base_recipe, **fields))
    assert info.value.key == key


def test_dry_run_lists_the_variants_with_their_run_folders(base_recipe, tmp_path, capsys):
    assert main(["ablate", str(write_ablation(base_recipe, **GRID)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 variants OK" in out and str(tmp_path / "runs" / "hard-negatives" / "12__mined") in out
    assert not (tmp_path / "runs").exists()
    recipes = variant_recipes(load_ablation(base_recipe.parent / "ablation.yaml"))
    assert [r.mining.enabled for *_, r in recipes] == [False, True, False, True]


def test_with_tasks_the_metric_is_the_mean_of_the_matching_mteb_tasks_and_each_task_gets_a_row(base_recipe):
    from st_retrofit.ablate import mteb_scores, results_table

    path = write_ablation(base_recipe, tasks="*-dev", **GRID)
    ablation = load_ablation(path)
    assert ablation.tasks == "*-dev"
    rows = []
    for i, (name, series, x, recipe) in enumerate(variant_recipes(ablation)[:2]):
        (recipe.run_dir / "eval").mkdir(parents=True)
        comparison = {"rows": [
            {"task": "pages-de-dev", "base": 0.5, "retrofitted": 0.6 + i / 10},
            {"task": "pages-en-dev", "base": 0.7, "retrofitted": 0.7},
            {"task": "pages-de-test", "base": 0.1, "retrofitted": 0.9},  # test tasks stay out of the ablation
        ]}  # fmt: skip
        (recipe.run_dir / "eval" / "mteb_comparison.json").write_text(json.dumps(comparison))
        rows.append({"variant": name, "series": series.label, "x": x.label, **mteb_scores(recipe, "*-dev")})
    assert rows[0]["retrofitted"]["ndcg"] == pytest.approx(0.65) and rows[0]["base"]["ndcg"] == pytest.approx(0.6)
    assert rows[1]["retrofitted_per_task"] == {"pages-de-dev": 0.7, "pages-en-dev": 0.7}
    summary = {"metric": "ndcg", "series": "train entities", "x": "negatives", "tasks": "*-dev", "rows": rows}
    table = results_table(summary)
    assert "| task (*-dev, nDCG@10 x100) | base | 8 / in-batch only | 8 / mined |" in table
    assert (
        "| pages-de-dev | 50.0 | 60.0 | 70.0 |" in table
        and "| **mean** (2) | **60.0** | **65.0** | **70.0** |" in table
    )
    with pytest.raises(ConfigError, match="no mteb task of the eval stage matches '\\*-test-typo'"):
        mteb_scores(recipe, "*-test-typo")


def test_an_ablation_can_end_in_a_soup_of_its_variants_scored_on_the_same_tasks(base_recipe, tmp_path):
    from sentence_transformers import SentenceTransformer
    from test_mteb_eval import write_beir

    from st_retrofit.evaluation.mteb import beir_task, run_mteb
    from st_retrofit.merge import merge_models

    beir = write_beir(tmp_path / "towns-en")
    path = write_ablation(
        base_recipe, tasks="towns-*", soup="all",
        set={"train.args.num_train_epochs": 1, "eval.mteb_tasks": [str(beir)]},
        x={"label": "seed", "key": "seed", "values": [7, 8]},
    )  # fmt: skip
    assert main(["ablate", str(path)]) == 0
    folder = tmp_path / "runs" / "hard-negatives"
    summary = json.loads((folder / "results.json").read_text())
    assert [row["variant"] for row in summary["rows"]] == ["7", "8", "soup"]
    soup = summary["rows"][-1]
    record = json.loads((folder / "soup" / "model" / "merge.json").read_text())
    assert [i["model"] for i in record["ingredients"]] == [str(folder / "7"), str(folder / "8")]
    assert [i["weight"] for i in record["ingredients"]] == [0.5, 0.5]
    # The soup's score is that of the two trained models averaged here, evaluated on the same task.
    trained = [SentenceTransformer(str(folder / seed / "train" / "model"), device="cpu") for seed in ("7", "8")]
    merged = merge_models(trained)
    merged.max_seq_length = 48
    expected = run_mteb(merged, "check", [beir_task(beir)], tmp_path / "check", batch_size=16)
    assert soup["retrofitted_per_task"] == pytest.approx(expected, abs=1e-4)
    assert (
        "Soup" in (folder / "results.md").read_text() and "best single variant" in (folder / "results.md").read_text()
    )


def test_a_soup_needs_tasks_and_known_labels(base_recipe):
    grid = {"x": {"label": "seed", "key": "seed", "values": [7, 8]}}
    with pytest.raises(ConfigError, match="set tasks"):
        load_ablation(write_ablation(base_recipe, soup="all", **grid))
    with pytest.raises(ConfigError, match="two or more x labels among \\['7', '8'\\]"):
        load_ablation(write_ablation(base_recipe, soup=["7", "9"], tasks="*", **grid))


def test_results_name_the_base_recipe_relative_to_the_working_folder(tmp_path, monkeypatch):
    from st_retrofit.ablate import _shown

    monkeypatch.chdir(tmp_path)
    assert _shown(tmp_path / "recipes" / "a.yaml") == "recipes/a.yaml"  # no path of this machine in results files
    assert _shown(Path("/elsewhere/a.yaml")) == "/elsewhere/a.yaml"


def test_only_runs_the_named_variants_and_the_table_covers_them(base_recipe, tmp_path, capsys):
    path = write_ablation(base_recipe, x=GRID["x"])
    assert main(["ablate", str(path), "--only", "mined"]) == 0  # a label; folder names work too
    folder = tmp_path / "runs" / "hard-negatives"
    summary = json.loads((folder / "results.json").read_text())
    assert [r["x"] for r in summary["rows"]] == ["mined"]
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["mined"]

    # The next one measured joins the table (in the file's order); the finished one is read, not run again.
    trained = folder / "mined" / "train" / "model" / "model.safetensors"
    stamp = trained.stat().st_mtime_ns
    assert main(["ablate", str(path), "--only", "in-batch-only"]) == 0
    summary = json.loads((folder / "results.json").read_text())
    assert [r["x"] for r in summary["rows"]] == ["in-batch only", "mined"]
    assert trained.stat().st_mtime_ns == stamp
    # A finished variant whose settings the file has since changed is left out, not shown with stale numbers.
    values = [GRID["x"]["values"][0], {"label": "mined", "set": {"mining.enabled": True, "mining.num_negatives": 3}}]
    changed = write_ablation(base_recipe, x={"label": "negatives", "values": values})
    assert main(["ablate", str(changed), "--only", "in-batch-only"]) == 0
    summary = json.loads((folder / "results.json").read_text())
    assert [r["x"] for r in summary["rows"]] == ["in-batch only"]

    assert main(["ablate", str(path), "--only", "in-batch-onyl"]) == 2
    assert "--only[0]: no variant 'in-batch-onyl' (did you mean in-batch-only?)" in capsys.readouterr().err


def test_ablation_files_are_checked_by_the_schema_editors_read():
    import jsonschema
    import yaml

    from st_retrofit.ablate import ablation_schema

    folder = Path(__file__).resolve().parents[1] / "recipes" / "ablations"
    committed = folder / "ablation.schema.json"
    assert json.loads(committed.read_text()) == ablation_schema(), (
        f"regenerate: st-retrofit schema --ablation > {committed}"
    )
    validator = jsonschema.Draft202012Validator(ablation_schema())
    shipped = sorted(folder.glob("*.yaml"))
    assert shipped
    for path in shipped:
        assert path.read_text().splitlines()[0] == "# yaml-language-server: $schema=ablation.schema.json", path.name
        assert [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))] == [], path.name
        assert load_ablation(path).x.values
    # What the loader refuses by shape, the schema flags too.
    assert list(validator.iter_errors({"name": "a", "base": "b.yaml", "x": {"values": []}}))
    assert list(validator.iter_errors({"name": "a", "base": "b.yaml", "x": {"values": [1]}, "metrc": "ndcg"}))

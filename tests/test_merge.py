"""Model merging: soups, slerp and task-vector merges of sentence-transformers models, and `st-retrofit merge`."""

from __future__ import annotations

import json

import pytest
import torch
from sentence_transformers import SentenceTransformer

from st_retrofit.cli import main
from st_retrofit.merge import MergeError, check_same_architecture, merge_models, slerp_tensor

TEXTS = ["Berlin ist die Hauptstadt.", "Mikaro was founded in 1723."]


def _finetuned(path, seed: int) -> SentenceTransformer:
    """The tiny model with every weight moved by seeded noise: a stand-in for a fine-tuned copy of it."""
    model = SentenceTransformer(str(path), device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


def _tensor(model: SentenceTransformer, name: str = "0.model.encoder.layer.0.attention.self.query.weight"):
    return model.state_dict()[name].clone()


@pytest.fixture
def models(tiny_model_path):
    base = SentenceTransformer(str(tiny_model_path), device="cpu")
    return base, _finetuned(tiny_model_path, 1), _finetuned(tiny_model_path, 2), _finetuned(tiny_model_path, 3)


def test_a_soup_of_identical_models_is_the_model(models):
    _, a, *_ = models
    soup = merge_models([a, a, a])
    assert torch.allclose(
        soup.encode(TEXTS, convert_to_tensor=True), a.encode(TEXTS, convert_to_tensor=True), atol=1e-6
    )


def test_a_soup_is_the_weighted_average_of_the_weights(models):
    _, a, b, c = models
    uniform = merge_models([a, b, c])
    assert torch.allclose(_tensor(uniform), (_tensor(a) + _tensor(b) + _tensor(c)) / 3, atol=1e-6)
    weighted = merge_models([a, b], weights=[3, 1])  # normalized: 0.75 / 0.25
    assert torch.allclose(_tensor(weighted), 0.75 * _tensor(a) + 0.25 * _tensor(b), atol=1e-6)
    assert not torch.allclose(_tensor(weighted), _tensor(uniform), atol=1e-3)
    with pytest.raises(MergeError, match="2 weights for 3 models"):
        merge_models([a, b, c], weights=[1, 1])


def test_slerp_returns_its_ends_at_0_and_1_and_keeps_the_norm_between(models):
    _, a, b, _ = models
    assert torch.allclose(_tensor(merge_models([a, b], "slerp", t=0.0)), _tensor(a), atol=1e-5)
    assert torch.allclose(_tensor(merge_models([a, b], "slerp", t=1.0)), _tensor(b), atol=1e-5)
    x, y = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    # Halfway along the arc between two orthogonal unit vectors, not the chord's midpoint (norm 0.707).
    assert torch.allclose(slerp_tensor(x, y, 0.5), torch.tensor([0.5**0.5, 0.5**0.5]), atol=1e-6)
    with pytest.raises(MergeError, match="exactly 2 models"):
        merge_models(list(models[1:]), "slerp")


def test_task_arithmetic_adds_weighted_task_vectors_to_the_base(models):
    base, a, b, _ = models
    assert torch.allclose(_tensor(merge_models([a], "task_arithmetic", [1.0], base)), _tensor(a), atol=1e-5)
    half = merge_models([a, b], "task_arithmetic", [0.5, 0.5], base)
    expected = _tensor(base) + 0.5 * (_tensor(a) - _tensor(base)) + 0.5 * (_tensor(b) - _tensor(base))
    assert torch.allclose(_tensor(half), expected, atol=1e-5)
    # TIES keeping every entry of a single task vector is that model again; at density 0.2 most entries stay at base.
    assert torch.allclose(_tensor(merge_models([a], "ties", [1.0], base, density=1.0)), _tensor(a), atol=1e-5)
    sparse = _tensor(merge_models([a], "ties", [1.0], base, density=0.2))
    assert 0.7 < (sparse == _tensor(base)).float().mean() < 0.9
    with pytest.raises(MergeError, match="needs the base model"):
        merge_models([a, b], "ties")


def test_models_of_another_architecture_are_refused_naming_the_tensor(models):
    _, a, b, _ = models
    state_a, state_b = a.state_dict(), dict(b.state_dict())
    key = "0.model.encoder.layer.1.output.dense.weight"
    state_b[key] = state_b[key][:, :-1]
    with pytest.raises(MergeError, match=f"tensor '{key}' is \\(32, 63\\) in b but \\(32, 64\\) in a"):
        check_same_architecture([state_a, state_b], ["a", "b"])
    del state_b[key]
    with pytest.raises(MergeError, match=f"b has no tensor '{key}'"):
        check_same_architecture([state_a, state_b], ["a", "b"])


def test_the_merge_command_writes_a_loadable_model_with_its_ingredients(models, tmp_path, capsys):
    _, a, b, c = models
    folders = []
    for name, model in (("a", a), ("b", b)):
        model.save_pretrained(str(tmp_path / name))
        folders.append(str(tmp_path / name))
    run = tmp_path / "runs" / "c"  # a run folder: its trained model is train/model
    c.save_pretrained(str(run / "train" / "model"))
    out = tmp_path / "soup"
    assert main(["merge", *folders, str(run), "-o", str(out), "--weights", "2", "1", "1"]) == 0
    merged = SentenceTransformer(str(out), device="cpu")
    assert torch.allclose(_tensor(merged), 0.5 * _tensor(a) + 0.25 * _tensor(b) + 0.25 * _tensor(c), atol=1e-6)
    record = json.loads((out / "merge.json").read_text())
    assert record["method"] == "soup"
    assert [(i["model"], i["weight"]) for i in record["ingredients"]] == [
        (folders[0], 0.5), (folders[1], 0.25), (str(run), 0.25)
    ]  # fmt: skip
    assert record["ingredients"][2]["path"] == str(run / "train" / "model")
    card = (out / "README.md").read_text()
    assert "## Merge" in card and f"| `{folders[0]}` | 0.5 |" in card

    # A finished model is never replaced: a second merge into the same folder is one error line.
    before = (out / "model.safetensors").read_bytes()
    assert main(["merge", *folders, "-o", str(out)]) == 2
    assert "exists; merge into a new folder" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before
    assert main(["merge", folders[0], "-o", str(tmp_path / "x")]) == 2
    assert "a merge needs two or more models, got 1" in capsys.readouterr().err
    assert main(["merge", *folders, "-o", str(tmp_path / "x"), "--method", "ties"]) == 2
    assert "name the base model (--base)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_recipe_merges_the_trained_model_with_a_checkpoint_and_its_base(tiny_recipe_data):
    """Recipe section merge: a soup of the trained model, its last checkpoint before the end and the base; the
    unmerged model is kept, eval and publish read the merged one, and the card lists the ingredients."""
    from st_retrofit.pipeline import run_pipeline
    from st_retrofit.recipe import recipe_from_dict

    data = {**tiny_recipe_data, "merge": {"method": "soup", "checkpoints": 1, "models": ["base"],
                                          "weights": [2, 1, 1]}}  # fmt: skip
    data["train"] = {**data["train"], "args": {**data["train"]["args"], "save_total_limit": 3}}
    recipe = recipe_from_dict(data)
    outputs = run_pipeline(recipe, stages=["synth", "mine", "train", "eval", "publish"])
    train = recipe.run_dir / "train"
    record = json.loads((train / "model" / "merge.json").read_text())
    steps = sorted(int(p.name.rpartition("-")[2]) for p in (train / "checkpoints").glob("checkpoint-*"))
    assert [i["model"] for i in record["ingredients"]] == ["trained", f"checkpoint-{steps[-2]}", "base"]
    assert [i["weight"] for i in record["ingredients"]] == [0.5, 0.25, 0.25]

    name = "0.model.encoder.layer.0.attention.self.query.weight"
    trained, base = SentenceTransformer(str(train / "unmerged")), SentenceTransformer(data["model"]["base"])
    checkpoint = SentenceTransformer(str(train / "checkpoint-models" / f"checkpoint-{steps[-2]}"))
    expected = 0.5 * _tensor(trained, name) + 0.25 * _tensor(checkpoint, name) + 0.25 * _tensor(base, name)
    assert torch.allclose(_tensor(SentenceTransformer(str(train / "model")), name), expected, atol=1e-6)
    assert not torch.allclose(_tensor(trained, name), _tensor(base, name))  # training moved the weights

    card = (outputs["publish"] / "README.md").read_text()
    assert "## Merge" in card and "checkpoint-" in card


def test_merge_settings_that_cannot_work_are_named(tiny_recipe_data):
    from st_retrofit.config import ConfigError
    from st_retrofit.recipe import recipe_from_dict

    cases = [
        ({"method": "soup"}, "merge.models", "another ingredient"),
        ({"method": "slerp", "models": ["base", "runs/other"]}, "merge.models", "exactly 2 models"),
        ({"method": "soup", "models": ["base"], "weights": [1.0]}, "merge.weights", "2 ingredients"),
        ({"method": "soupp", "models": ["base"]}, "merge.method", "did you mean soup"),
        ({"method": "soup", "models": ["base"], "parameters": {"lambda": 1}}, "merge.parameters", "mergekit's"),
    ]
    for merge, key, words in cases:
        with pytest.raises(ConfigError) as info:
            recipe_from_dict({**tiny_recipe_data, "merge": merge})
        assert info.value.key == key and words in info.value.message, merge
    data = {**tiny_recipe_data, "merge": {"method": "soup", "checkpoints": 2}}
    data["train"] = {**data["train"], "args": {**data["train"]["args"], "save_total_limit": 2}}
    with pytest.raises(ConfigError) as info:
        recipe_from_dict(data)
    assert info.value.key == "merge.checkpoints" and "save_total_limit" in info.value.message


def test_a_changed_ingredient_makes_the_merged_model_stale(tiny_recipe_data, tiny_model_path, tmp_path):
    import shutil

    from st_retrofit import pipeline
    from st_retrofit.recipe import recipe_from_dict

    ingredient = tmp_path / "other-model"
    shutil.copytree(tiny_model_path, ingredient)
    data = {**tiny_recipe_data, "merge": {"method": "slerp", "models": [str(ingredient)], "t": 0.3}}
    before = pipeline.fingerprint(recipe_from_dict(data), "train")
    _finetuned(ingredient, 7).save_pretrained(str(ingredient))  # the ingredient was retrained
    assert pipeline.fingerprint(recipe_from_dict(data), "train") != before


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ({"method": "soup", "weights": [0.7, 0.3]}, {"method": "linear", "parameters": {"weight": [0.7, 0.3]}}),
        ({"method": "task_arithmetic", "weights": [1.0, 0.5]},
         {"method": "task_arithmetic", "parameters": {"weight": [1.0, 0.5]}}),
        ({"method": "ties", "weights": [1.0, 1.0], "density": 0.5},
         {"method": "ties", "parameters": {"weight": [1.0, 1.0], "density": 0.5}}),
    ],
)  # fmt: skip
def test_built_in_methods_give_mergekits_tensors(models, ours, theirs):
    """Our soup, task arithmetic and TIES (no mergekit needed) against SentenceTransformer.merge with mergekit."""
    pytest.importorskip("mergekit")
    base, a, b, _ = models
    uses_base = ours["method"] != "soup"
    mine = merge_models([a, b], base=base if uses_base else None, **ours)
    reference = SentenceTransformer.merge([a, b], base_model=base if uses_base else None, **theirs)
    expected = reference.state_dict()
    for name, tensor in mine.state_dict().items():
        assert torch.allclose(tensor.float(), expected[name].float(), atol=1e-6), name
    # The same through our mergekit: prefix, with our arguments filling mergekit's parameters.
    through = merge_models([a, b], f"mergekit:{theirs['method']}", weights=ours["weights"], base=base if uses_base
                           else None, density=ours.get("density", 0.5))  # fmt: skip
    assert torch.allclose(_tensor(through), _tensor(reference), atol=1e-6)


def test_any_mergekit_method_from_the_command_line(models, tmp_path, capsys):
    pytest.importorskip("mergekit")
    base, a, b, c = models
    folders = []
    for name, model in (("base", base), ("a", a), ("b", b), ("c", c)):
        model.save_pretrained(str(tmp_path / name))
        folders.append(str(tmp_path / name))
    out = tmp_path / "stock"
    assert main(["merge", *folders[1:], "-o", str(out), "--method", "mergekit:model_stock", "--base", folders[0]]) == 0
    record = json.loads((out / "merge.json").read_text())
    assert record["method"] == "mergekit:model_stock" and record["base"] == folders[0]
    merged = _tensor(SentenceTransformer(str(out), device="cpu"))
    assert not torch.allclose(merged, _tensor(a)) and not torch.allclose(merged, _tensor(base))
    assert main(["merge", *folders[1:3], "-o", str(tmp_path / "x"), "--method", "mergekit:modelstock"]) == 2
    assert "did you mean mergekit:model_stock?" in capsys.readouterr().err
    assert main(["merge", *folders[1:3], "-o", str(tmp_path / "x"), "--method", "mergekit:model_stock"]) == 2
    assert "name the base model (--base)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

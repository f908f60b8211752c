from __future__ import annotations

import pytest
import yaml

from st_retrofit.cli import STAGE_HELP, main


@pytest.mark.parametrize("command", ["run", "validate", *STAGE_HELP])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "recipe" in capsys.readouterr().out


def test_validate_prints_the_resolved_recipe(tiny_recipe_data, tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_data))
    assert main(["validate", str(path), "--set", "eval.k=3"]) == 0
    out = capsys.readouterr().out
    assert '"k": 3' in out and "recipe OK" in out


def test_bad_recipe_exits_2_with_one_line_naming_the_key(tiny_recipe_data, tmp_path, capsys):
    tiny_recipe_data["mining"]["num_negativs"] = 4
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_data))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: mining.num_negativs: unknown key (did you mean num_negatives?)"
    assert not (tmp_path / "runs").exists()


def test_stage_without_its_input_says_what_to_run_first(tiny_recipe_data, tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_data))
    assert main(["train", str(path)]) == 2
    assert "run `st-retrofit mine`" in capsys.readouterr().err


def test_unknown_stage_in_run_is_reported(tiny_recipe_data, tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_data))
    assert main(["run", str(path), "--stages", "synth,distill"]) == 2
    err = capsys.readouterr().err
    assert "--stages: unknown stage 'distill'; stages: synth, mine, train, eval, publish" in err
    assert not (tmp_path / "runs").exists()  # named before the recipe is checked or a run folder is made

"""Fingerprints hash what a run set, not the release it ran with: a new field leaves finished runs up to date, and a
changed default must bump its section's ``defaults_version`` so that runs that relied on the old one run again.

``tests/data/section_defaults.json`` holds every section's defaults and version. When a test here fails:
- a field was added: run ``python tests/test_fingerprints.py`` to record its default (no bump: its default keeps
  the old behaviour, or it would not be a default);
- a default changed: bump the section's ``defaults_version`` (``ClassVar`` on its config class), then record.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from st_retrofit import pipeline
from st_retrofit.recipe import SECTIONS, Recipe, recipe_from_dict

SNAPSHOT = Path(__file__).parent / "data" / "section_defaults.json"


def current_defaults() -> dict:
    recipe = Recipe()
    return {
        section: {
            "defaults_version": getattr(recipe, section).defaults_version,
            "defaults": getattr(recipe, section).model_dump(mode="json"),
        }
        for section in SECTIONS
    }


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_a_changed_default_comes_with_a_bumped_version_and_new_fields_are_recorded():
    recorded, current = json.loads(SNAPSHOT.read_text()), current_defaults()
    problems = []
    for section, now in current.items():
        before = recorded.get(section, {"defaults_version": now["defaults_version"], "defaults": {}})
        old, new = flatten(before["defaults"]), flatten(now["defaults"])
        changed = sorted(k for k in old.keys() & new.keys() if old[k] != new[k])
        if changed and now["defaults_version"] == before["defaults_version"]:
            problems.append(f"{section}: defaults of {changed} changed; bump defaults_version, then record")
        if new.keys() - old.keys() or old.keys() - new.keys():
            problems.append(f"{section}: fields added or removed; record them (python tests/test_fingerprints.py)")
    assert not problems, "\n".join(problems)


def test_a_field_set_to_its_default_does_not_change_a_fingerprint_and_another_value_does(tiny_recipe_data):
    plain = recipe_from_dict(tiny_recipe_data, check=False)
    explicit = recipe_from_dict(tiny_recipe_data, ["mixing.length_buckets=0", "merge.method=null"], check=False)
    other = recipe_from_dict(tiny_recipe_data, ["mixing.length_buckets=4"], check=False)
    assert pipeline.fingerprint(explicit, "train") == pipeline.fingerprint(plain, "train")
    assert pipeline.fingerprint(other, "train") != pipeline.fingerprint(plain, "train")
    assert pipeline.fingerprint(other, "synth") == pipeline.fingerprint(plain, "synth")


def test_a_bumped_defaults_version_reruns_the_stages_that_read_the_section(tiny_recipe_data, monkeypatch):
    from st_retrofit.mixing.config import MixingConfig

    recipe = recipe_from_dict(tiny_recipe_data, check=False)
    before = {name: pipeline.fingerprint(recipe, name) for name in pipeline.STAGES}
    monkeypatch.setattr(MixingConfig, "defaults_version", MixingConfig.defaults_version + 1)
    after = {name: pipeline.fingerprint(recipe, name) for name in pipeline.STAGES}
    assert {name for name in before if before[name] != after[name]} == {"train", "eval", "publish"}


if __name__ == "__main__":
    SNAPSHOT.parent.mkdir(exist_ok=True)
    SNAPSHOT.write_text(json.dumps(current_defaults(), indent=1, sort_keys=True) + "\n")
    sys.stderr.write(f"recorded {SNAPSHOT}\n")

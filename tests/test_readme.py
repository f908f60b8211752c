"""The README's code runs as written: the block is read from the README, not copied here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(heading: str) -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_parts_example_trains_what_it_mines_with_the_models_prompts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = readme_block("Using the parts in your own script")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example

    trainer, student = namespace["trainer"], namespace["student"]
    collator = trainer.data_collator
    # What mining used and encode_query / encode_document add: e5's own prompts, on both sides.
    assert collator._prompt(None, "query", "query") == student.prompts["query"] == "query: "
    assert collator._prompt(None, "negative_1", "document") == "passage: "
    assert (tmp_path / "runs" / "my-script" / "model" / "model.safetensors").is_file()
    assert not (tmp_path / "tmp_trainer").exists()

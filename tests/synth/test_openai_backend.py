"""The OpenAI-compatible backend against a server started on 127.0.0.1, through the real ``openai`` client."""

from __future__ import annotations

import json
import logging

import pytest

from st_retrofit.synth import (
    OpenAICompatibleBackend,
    ResponseCache,
    SynthBackendError,
    SyntheticDataGenerator,
    TemplateLibrary,
    load_corpus,
)
from st_retrofit.synth.config import BrainstormConfig, ValidationConfig


def _generator(server, tmp_path, templates=("short-long",), brainstorm=None, **backend_kwargs):
    library = TemplateLibrary()
    kwargs = {"concurrency": 4, "max_retries": 3, "timeout": 2.0} | backend_kwargs
    backend = OpenAICompatibleBackend("test-model", base_url=server.base_url, **kwargs)
    return SyntheticDataGenerator(
        backend,
        library.select(list(templates)),
        library,
        ValidationConfig(),
        seed=0,
        cache=ResponseCache(tmp_path / "cache"),
        brainstorm=brainstorm or BrainstormConfig(enabled=False),
    )


def test_pairs_come_back_through_the_openai_client_with_requests_in_parallel(fake_server, corpus_file, tmp_path):
    with fake_server(delay=0.1) as server:
        pairs, report = _generator(server, tmp_path).generate(load_corpus(corpus_file))
    assert len(pairs) == 9 and report.requests["generated"] == 9
    assert 2 <= server.max_in_flight <= 4
    body = server.bodies[0]
    assert body["model"] == "test-model" and body["response_format"] == {"type": "json_object"}
    assert isinstance(body["seed"], int)
    row = pairs[0]
    assert row["backend"] == "openai" and row["model"] == "test-model" and row["template"] == "short-long"
    assert report.tokens["completion_tokens"] == 45


def test_429_and_500_answers_are_retried_until_the_request_succeeds(fake_server, corpus_file, tmp_path):
    plan = {1: 429, 2: 500, 3: "ok"}
    with fake_server(plan=lambda prompt, attempt: plan[attempt]) as server:
        pairs, report = _generator(server, tmp_path).generate(load_corpus(corpus_file))
    assert len(pairs) == 9 and report.requests["failed"] == 0
    assert set(server.attempts.values()) == {3}


def test_a_request_past_the_timeout_is_retried(fake_server, corpus_file, tmp_path):
    with fake_server(plan=lambda prompt, attempt: "hang" if attempt == 1 else "ok", hang_seconds=3.0) as server:
        pairs, report = _generator(server, tmp_path, timeout=0.5, max_retries=2).generate(load_corpus(corpus_file))
    assert len(pairs) == 9 and report.requests["failed"] == 0
    assert set(server.attempts.values()) == {2}


def test_a_request_failing_after_every_retry_is_counted_not_cached_and_asked_again_next_run(
    fake_server, corpus_file, tmp_path
):
    corpus = load_corpus(corpus_file)
    failing = corpus[0]["text"]
    plan = lambda prompt, attempt: 500 if failing in prompt else "ok"  # noqa: E731
    with fake_server(plan=plan) as server:
        pairs, report = _generator(server, tmp_path, max_retries=1).generate(corpus)
    assert len(pairs) == 8
    assert report.requests["failed"] == 1 and report.errors == {"HTTP 500": 1}
    assert [server.attempts[p] for p in server.attempts if failing in p] == [2]

    with fake_server() as server:  # the server recovered: only the failed prompt is asked for
        pairs, report = _generator(server, tmp_path).generate(corpus)
    assert len(pairs) == 9 and report.requests == {"cached": 8, "generated": 1, "failed": 0}
    assert len(server.answered) == 1 and failing in server.answered[0]


def test_a_server_down_for_every_request_stops_the_run_with_a_clear_error(fake_server, corpus_file, tmp_path):
    with fake_server(plan=lambda prompt, attempt: 503) as server:
        with pytest.raises(SynthBackendError, match="all 9 requests .* failed after retries"):
            _generator(server, tmp_path, max_retries=0).generate(load_corpus(corpus_file))


def test_a_refused_key_stops_the_run_naming_the_variable_and_not_the_key(
    fake_server, corpus_file, tmp_path, monkeypatch
):
    monkeypatch.setenv("MY_LLM_KEY", "sk-wrong-0123456789")
    with fake_server(plan=lambda prompt, attempt: 401) as server:
        with pytest.raises(SynthBackendError, match=r"\$MY_LLM_KEY") as error:
            _generator(server, tmp_path, api_key_env="MY_LLM_KEY").generate(load_corpus(corpus_file))
    assert "sk-wrong" not in str(error.value)


def test_the_api_key_is_sent_but_never_logged_printed_or_written(
    fake_server, corpus_file, tmp_path, monkeypatch, caplog, capsys
):
    secret = "sk-test-SECRET-5f3a9c"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    caplog.set_level(logging.DEBUG)  # the openai and httpx loggers included
    with fake_server() as server:
        generator = _generator(server, tmp_path, templates=("short-long", "question-answer"))
        pairs, report = generator.generate(load_corpus(corpus_file))
        pairs.save_to_disk(str(tmp_path / "out"))
    assert server.authorization == {f"Bearer {secret}"}
    captured = capsys.readouterr()
    assert secret not in caplog.text + captured.out + captured.err
    assert secret not in repr(generator.backend) + str(generator.backend.identity()) + str(report.to_dict())
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_brainstormed_tasks_reach_the_generation_prompts(fake_server, corpus_file, tmp_path):
    with fake_server() as server:
        generator = _generator(server, tmp_path, brainstorm=BrainstormConfig(rounds=2, tasks_per_round=3))
        pairs, report = generator.generate(load_corpus(corpus_file))
    brainstorm_calls = [b for b in server.bodies if b["messages"][-1]["content"].startswith("Brainstorm")]
    assert len({b["seed"] for b in brainstorm_calls}) == len(brainstorm_calls) == 2  # two rounds, two seeds
    tasks = report.brainstormed_tasks["short-long"]
    assert len(tasks) == 3  # both rounds gave the same three tasks; pooled without repeats
    generation_prompts = [p for p in server.attempts if p.startswith("Retrieval task:")]
    assert generation_prompts and all(any(task in p for task in tasks) for p in generation_prompts)


def test_the_server_receives_the_examples_as_earlier_turns(fake_server, corpus_file, tmp_path):
    with fake_server() as server:
        generator = _generator(server, tmp_path)
        generator.few_shot = 2
        pairs, report = generator.generate(load_corpus(corpus_file))
    assert report.requests["generated"] == len(server.bodies) == 9 and len(pairs) == 9
    for body in server.bodies:
        roles = [m["role"] for m in body["messages"]]
        assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
        assert all(json.loads(m["content"])["query"] for m in body["messages"] if m["role"] == "assistant")

"""The synthesis pipeline: corpus passages -> rendered prompts -> backend -> parsed, validated, capped pairs."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter, defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from st_retrofit.synth.backends import GenerationRequest, HeuristicBackend, SynthBackend, SynthBackendError
from st_retrofit.synth.cache import ResponseCache, request_key
from st_retrofit.synth.validation import RULES, PairValidator, parse_json_answer
from st_retrofit.text import language_name, normalize_language

if TYPE_CHECKING:
    from datasets import Dataset

    from st_retrofit.synth.config import BrainstormConfig, ValidationConfig
    from st_retrofit.synth.templates import SynthTemplate, TemplateLibrary

logger = logging.getLogger(__name__)

# What {{ task }} says when no brainstormed task is available (E5's instruction for web search retrieval).
DEFAULT_TASK = "Given a web search query, retrieve relevant passages that answer the query"
OUTPUT_COLUMNS = ("query", "document", "id", "language", "query_language", "task", "template", "backend", "model",
                  "seed")  # fmt: skip


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed from any parts, stable across processes and platforms."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:4], "little") >> 1


def _bucket(template: SynthTemplate, context: dict[str, Any]) -> str:
    """What caps count a pair under: its language, or ``query-document`` (``de-en``) across languages."""
    query, document = template.language_of("query", context), template.language_of("document", context)
    return document if query == document else f"{query}-{document}"


@dataclass
class _Job:
    index: int
    document: dict[str, Any]
    template: SynthTemplate
    bucket: tuple[str, str]
    context: dict[str, Any]
    seed: int
    request: GenerationRequest | None = None  # rendered when the job is issued, not for every passage up front


@dataclass
class SynthesisReport:
    """What a run did: requests by outcome, rejections by rule, accepted pairs by language and task."""

    documents: int = 0
    jobs: int = 0
    requests: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    accepted: Counter = field(default_factory=Counter)
    tokens: Counter = field(default_factory=Counter)
    rejected_examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    brainstormed_tasks: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        by_language, by_task = Counter(), Counter()
        for (language, task), count in self.accepted.items():
            by_language[language] += count
            by_task[task] += count
        return {
            "documents": self.documents,
            "jobs": self.jobs,
            "requests": dict(self.requests),
            "errors": dict(self.errors),
            "rejected": {rule: self.rejected[rule] for rule in RULES if self.rejected[rule]},
            "accepted": sum(self.accepted.values()),
            "accepted_by_language": dict(sorted(by_language.items())),
            "accepted_by_task": dict(sorted(by_task.items())),
            "tokens": dict(self.tokens),
            "rejected_examples": dict(self.rejected_examples),
            "brainstormed_tasks": self.brainstormed_tasks,
        }


class SyntheticDataGenerator:
    """Turns corpus passages into validated (query, document) pairs with templates and a backend.

    For every passage (in a seeded order) it draws ``pairs_per_document`` of the templates that apply (a template
    needing a title skips untitled passages), renders each with the passage, a target language for cross-lingual
    templates, one value of each template variable, and a brainstormed task. Requests go out in chunks; every
    answer is stored in the :class:`~st_retrofit.synth.ResponseCache` as it arrives, so a killed run loses nothing
    and a rerun makes no call twice. Answers are validated in request order (deterministic given the answers), and
    caps per language and per task stop issuing requests for a full bucket, so a large corpus costs only what the
    caps need. Heuristic templates are rendered without an LLM.

    Args:
        backend: the LLM backend for ``llm``/``brainstorm`` templates (``None`` if all templates are heuristic).
        templates: the templates to draw from.
        library: the library the brainstorm templates come from.
        validation: the validation settings.
        seed: the run seed; every draw and request seed derives from it.
        cache: where answers are kept; ``None`` disables caching.
        pairs_per_document: templates drawn per passage.
        target_languages: target languages of cross-lingual templates; empty = the corpus's languages.
        max_per_language: the most accepted pairs per language (per language pair, ``de-en``, for pairs across
            languages); ``None`` = no cap.
        max_per_task: the most accepted pairs per task type; ``None`` = no cap.
        brainstorm: brainstorm settings; ``None`` disables the step (``{{ task }}`` gets a generic task).
        chunk_size: requests issued between validations (and between cap checks).
        few_shot: worked examples from each ``llm`` template's ``examples`` shown before each request, as earlier
            chat turns (the request's language first); 0 = none.

    Example::

        from st_retrofit.synth.config import ValidationConfig
        from st_retrofit.synth import OpenAICompatibleBackend, SyntheticDataGenerator, TemplateLibrary, load_corpus

        library = TemplateLibrary()
        backend = OpenAICompatibleBackend("Qwen/Qwen2.5-7B-Instruct", base_url="http://localhost:8000/v1")
        generator = SyntheticDataGenerator(
            backend, library.select(["short-long", "question-answer"]), library, ValidationConfig(), seed=0,
            cache=ResponseCache("synth-cache"), max_per_language=4000,
        )
        pairs, report = generator.generate(load_corpus("wiki.parquet"))
    """

    def __init__(
        self,
        backend: SynthBackend | None,
        templates: Sequence[SynthTemplate],
        library: TemplateLibrary,
        validation: ValidationConfig,
        seed: int = 0,
        cache: ResponseCache | None = None,
        pairs_per_document: int = 1,
        target_languages: Sequence[str] = (),
        max_per_language: int | None = None,
        max_per_task: int | None = None,
        brainstorm: BrainstormConfig | None = None,
        chunk_size: int = 256,
        few_shot: int = 0,
    ) -> None:
        needs_llm = [t.name for t in templates if t.kind_entry.needs_llm]
        if needs_llm and (backend is None or isinstance(backend, HeuristicBackend)):
            raise ValueError(f"templates {needs_llm} need an LLM backend (openai or transformers)")
        self.backend, self.templates, self.library = backend, list(templates), library
        self.validation, self.seed, self.cache = validation, seed, cache
        self.pairs_per_document, self.chunk_size = pairs_per_document, chunk_size
        self.target_languages = [normalize_language(code) for code in target_languages]
        self.max_per_language, self.max_per_task = max_per_language, max_per_task
        self.brainstorm, self.few_shot = brainstorm, few_shot
        self._heuristic = HeuristicBackend()
        self._tasks: dict[str, list[str]] | None = None

    # -- requests ---------------------------------------------------------------------------------------------

    def _backend_for(self, template: SynthTemplate) -> SynthBackend:
        return self.backend if template.kind_entry.needs_llm else self._heuristic

    def _request(self, template: SynthTemplate, context: dict[str, Any], seed: int) -> GenerationRequest:
        kind = template.kind_entry
        backend = self._backend_for(template)
        messages = kind.messages(template, context, self.few_shot, seed)
        text = kind.prompt_text(template, context, self.few_shot, seed)
        # A heuristic's answer depends on its method and the passage only; an LLM's on what it was sent.
        if not kind.needs_llm:
            identity, sent = (
                backend.identity() | {"template": template.name},
                [{"context": json.dumps(context, sort_keys=True)}],
            )
        else:
            identity, sent = backend.identity(), messages or [{"prompt": text, "stop": template.stop}]
        key = request_key(identity, sent, seed)
        return GenerationRequest(
            key, messages, template.output_schema or None, seed, template, context, prompt=text,
            stop=tuple(template.stop),
        )  # fmt: skip

    def _run(self, requests: list[GenerationRequest], report: SynthesisReport, desc: str) -> dict[str, str]:
        """Answers by request key: cached ones first, the rest from the backends (cached as they arrive)."""
        from tqdm.auto import tqdm

        answers: dict[str, str] = {}
        by_backend: dict[int, list[GenerationRequest]] = defaultdict(list)
        for request in requests:
            by_backend[id(self._backend_for(request.template))].append(request)
        for group in by_backend.values():
            backend = self._backend_for(group[0].template)
            cache = self.cache if backend.cacheable else None
            if cache is not None:
                answers.update(cache.get_many([r.key for r in group]))
                report.requests["cached"] += sum(r.key in answers for r in group)
            missing = [r for r in group if r.key not in answers]
            if not missing:
                continue
            progress = tqdm(total=len(missing), desc=desc, unit="req", disable=len(missing) < 32, leave=False)
            skipped = 0
            for result in backend.generate(missing):
                progress.update()
                if result.text is None:
                    report.errors[result.error or "unknown"] += 1
                    skipped += result.skipped
                    continue
                answers[result.request.key] = result.text
                report.requests["generated" if backend.cacheable else "heuristic"] += 1
                report.tokens.update(result.usage)
                if cache is not None:
                    cache.put(result.request.key, result.text, backend.model, result.usage)
            progress.close()
            failed = len(missing) - sum(r.key in answers for r in missing) - skipped
            report.requests["failed"] += failed
            if skipped:
                report.requests["skipped"] += skipped
            if backend.cacheable and failed == len(missing) >= 8:
                raise SynthBackendError(
                    f"all {failed} requests to {backend!r} failed after retries ({dict(report.errors)}); "
                    f"check that the server is up; answers so far are cached"
                )
        return answers

    def brainstormed_tasks(self, report: SynthesisReport | None = None) -> dict[str, list[str]]:
        """Task descriptions per template that asks for a brainstorm (each brainstorm round is one cached call)."""
        if self._tasks is not None:
            return self._tasks
        report = report or SynthesisReport()
        self._tasks = {}
        wanted = [
            t for t in self.templates if t.brainstorm and self.brainstorm is not None and self.brainstorm.enabled
        ]
        requests = {}
        for template in wanted:
            brainstorm = self.library[template.brainstorm]
            for round_index in range(self.brainstorm.rounds):
                context = {"count": self.brainstorm.tasks_per_round, "task_type": template.task_type}
                seed = derive_seed(self.seed, "brainstorm", template.name, round_index)
                requests[(template.name, round_index)] = self._request(brainstorm, context, seed)
        answers = self._run(list(requests.values()), report, "Brainstorming") if requests else {}
        for (name, _), request in sorted(requests.items()):
            output, _ = parse_json_answer(answers.get(request.key, ""), request.schema)
            tasks = self._tasks.setdefault(name, [])
            for task in (output or {}).get("tasks", []):
                if isinstance(task, str) and task.strip() and task.strip() not in tasks:
                    tasks.append(task.strip())
        for name, tasks in self._tasks.items():
            if not tasks:
                logger.warning("Brainstorming for %s gave no usable task; using the generic one", name)
        report.brainstormed_tasks = {name: tasks for name, tasks in self._tasks.items()}
        return self._tasks

    def _jobs(self, corpus: Dataset, report: SynthesisReport) -> list[_Job]:
        tasks = self.brainstormed_tasks(report)
        corpus_languages = sorted(set(corpus["language"]))
        documents = corpus.to_list()  # one read; row-by-row access to a Dataset costs a lookup per row
        random.Random(derive_seed(self.seed, "order")).shuffle(documents)
        translations: dict[str, dict[str, str]] = defaultdict(dict)  # parallel_id -> language -> first text
        for document in documents:
            if document.get("parallel_id"):
                translations[document["parallel_id"]].setdefault(document["language"], document["text"])
        jobs = []
        for document in documents:
            language = document["language"]
            targets = [code for code in (self.target_languages or corpus_languages) if code != language]
            parallel = translations.get(document.get("parallel_id") or "", {})
            document["parallel"] = {code: text for code, text in parallel.items() if code in targets}
            applicable = [
                t for t in self.templates
                if t.applies_to(document) and (self._targets(t, targets, document) or not t.cross_lingual)
            ]  # fmt: skip
            rng = random.Random(derive_seed(self.seed, "templates", document["id"]))
            for template in rng.sample(applicable, min(self.pairs_per_document, len(applicable))):
                seed = derive_seed(self.seed, document["id"], template.name)
                draw = random.Random(seed)
                target = (
                    draw.choice(self._targets(template, targets, document)) if template.cross_lingual else language
                )
                context = {
                    "passage": document["text"],
                    "title": document["title"],
                    "language": language,
                    "language_name": language_name(language),
                    "target_language": target,
                    "target_language_name": language_name(target),
                    "task_type": template.task_type,
                    "task": draw.choice(tasks.get(template.name) or [DEFAULT_TASK]),
                }
                if "parallel" in template.requires:
                    context["parallel_passage"] = document["parallel"][target]
                context.update({name: draw.choice(values) for name, values in sorted(template.variables.items())})
                jobs.append(_Job(len(jobs), document, template, (_bucket(template, context), template.task_type),
                                 context, seed))  # fmt: skip
        return jobs

    @staticmethod
    def _targets(template: SynthTemplate, targets: list[str], document: dict[str, Any]) -> list[str]:
        """A parallel template's targets are the languages the passage has a translation in."""
        return sorted(document["parallel"]) if "parallel" in template.requires else targets

    # -- caps ---------------------------------------------------------------------------------------------------

    def _room(self, bucket: tuple[str, str], accepted: Counter, picked: Counter) -> float:
        language, task = bucket
        room = float("inf")
        if self.max_per_language is not None:
            room = min(room, self.max_per_language - accepted["l", language] - picked["l", language])
        if self.max_per_task is not None:
            room = min(room, self.max_per_task - accepted["t", task] - picked["t", task])
        return room

    def _next_chunk(self, queues: dict[tuple[str, str], deque[_Job]], accepted: Counter) -> list[_Job]:
        """Up to ``chunk_size`` jobs, round-robin over buckets, none beyond a bucket's remaining room."""
        chunk: list[_Job] = []
        picked: Counter = Counter()
        for bucket in [b for b, queue in queues.items() if self._room(b, accepted, Counter()) <= 0]:
            queues[bucket].clear()  # full for good
        while len(chunk) < self.chunk_size:
            progressed = False
            for bucket, queue in sorted(queues.items()):
                if queue and len(chunk) < self.chunk_size and self._room(bucket, accepted, picked) > 0:
                    chunk.append(queue.popleft())
                    picked["l", bucket[0]] += 1
                    picked["t", bucket[1]] += 1
                    progressed = True
            if not progressed:
                break
        return sorted(chunk, key=lambda job: job.index)

    # -- the run ------------------------------------------------------------------------------------------------

    def generate(self, corpus: Dataset) -> tuple[Dataset, SynthesisReport]:
        """Pairs from ``corpus`` (columns ``id``, ``text``, ``title``, ``language``; see
        :func:`~st_retrofit.synth.load_corpus`), with provenance columns :data:`OUTPUT_COLUMNS`, and the report."""
        from datasets import Dataset

        report = SynthesisReport(documents=len(corpus))
        jobs = self._jobs(corpus, report)
        report.jobs = len(jobs)
        queues: dict[tuple[str, str], deque[_Job]] = defaultdict(deque)
        for job in jobs:
            queues[job.bucket].append(job)
        validator, accepted, rows = PairValidator(self.validation), Counter(), []
        while chunk := self._next_chunk(queues, accepted):
            for job in chunk:
                job.request = self._request(job.template, job.context, job.seed)
            answers = self._run([job.request for job in chunk], report, "Generating")
            for job in chunk:
                answer = answers.get(job.request.key)
                if answer is None:
                    continue
                language, task = job.bucket
                pair, rule = validator.check(job.template, answer, job.context)
                if pair is None:
                    report.rejected[rule] += 1
                    if len(report.rejected_examples[rule]) < 3:
                        report.rejected_examples[rule].append(f"[{job.template.name}] {answer[:300]}")
                    continue
                accepted["l", language] += 1
                accepted["t", task] += 1
                report.accepted[language, task] += 1
                backend = self._backend_for(job.template)
                rows.append(
                    {
                        **pair,
                        "id": job.document["id"],
                        "language": job.template.language_of("document", job.context),
                        "query_language": job.template.language_of("query", job.context),
                        "task": task,
                        "template": job.template.name,
                        "backend": backend.kind,
                        "model": backend.model,
                        "seed": job.request.seed,
                    }
                )
        answered = sum(report.requests[kind] for kind in ("generated", "cached", "heuristic"))
        # A heuristic that does not apply to a passage (too few sentences) is no server failure.
        if self.backend is not None and report.requests["failed"] and not answered:
            raise SynthBackendError(
                f"all {report.requests['failed']} requests to {self.backend!r} failed after retries "
                f"({dict(report.errors)}); check that the server is up"
            )
        logger.info(
            "Synthesized %d pairs from %d documents (%d requests: %s; rejected: %s)",
            len(rows), len(corpus), len(jobs), dict(report.requests), dict(report.rejected) or "none",
        )  # fmt: skip
        data = Dataset.from_list(rows) if rows else Dataset.from_dict({c: [] for c in OUTPUT_COLUMNS})
        return data.select_columns(list(OUTPUT_COLUMNS)), report

"""The manual-page benchmark, built from .deb files made here (never downloaded)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from st_retrofit.offline.manpages import build, parse_page, parse_roff, part_of, roff_inline

MANPAGES_ABLATIONS = (
    "manpages-dev.yaml",
    "manpages-minilm-distill.yaml",
    "manpages-teacher-dev.yaml",
)  # they need the built benchmark
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb to build .deb files")

LS_DE = r""".\" -*- coding: UTF-8 -*-
.TH LS 1 "September 2022" "GNU coreutils 9.1" "Dienstprogramme für Benutzer"
.SH BEZEICHNUNG
ls \- Verzeichnisinhalte auflisten
.SH ÜBERSICHT
\fBls\fP [\fI\,OPTION\/\fP]… [\fI\,DATEI\/\fP]…
.SH BESCHREIBUNG
.\" Add any additional description here
.PP
Auflistung von Informationen über die DATEIen (Standardvorgabe ist das
aktuelle Verzeichnis). Die Einträge werden alphabetisch sortiert, falls
weder \fB\-cftuvSUX\fP noch \fB\-\-sort\fP angegeben wurden.
.TP
\fB\-a\fP, \fB\-\-all\fP
Einträge nicht ignorieren, die mit ».« beginnen
.SH AUTOR
Richard M. Stallman
"""


def page(title: str, summary: str, description: str, heading: str = "DESCRIPTION", name: str = "NAME") -> str:
    return f'.TH {title} 1\n.SH {name}\n{title.lower()} \\- {summary}\n.SH SYNOPSIS\n.B {title.lower()}\n' \
           f".SH {heading}\n.PP\n{description}\n"  # fmt: skip


def test_roff_markup_becomes_plain_text():
    assert roff_inline(r"\fB\-\-sort\fP=\fI\,WORD\/\fP \(em \e n\&.") == "--sort=WORD — \\ n."
    sections = parse_roff(LS_DE)
    assert [title for title, _ in sections] == ["BEZEICHNUNG", "ÜBERSICHT", "BESCHREIBUNG", "AUTOR"]
    description = dict(sections)["BESCHREIBUNG"]
    assert description.startswith("Auflistung von Informationen über die DATEIen (Standardvorgabe ist das aktuelle")
    assert "--sort angegeben wurden." in description and "-a, --all" in description and "Add any" not in description
    text = dict(parse_roff('.SH X\n.BR ls (1),\n.IR "two words" " and"\n'))["X"]
    assert text == "ls(1), two words and"


def test_special_characters_and_layout_escapes_become_the_characters_groff_prints():
    # Accents and quotes of translated pages, DocBook's bullets and link colours: no roff escape is left.
    assert roff_inline(r"k\(:onnte als \(FcBackend\(Fo, caf\('e \[aq]x\[aq]") == "könnte als »Backend«, café 'x'"
    assert roff_inline(r"\h'-04'\(bu\h'+03'item, see \m[blue]\fBfoo\fR\m[]\u[1]\d") == "•item, see foo[1]"
    assert roff_inline(r"\[u00E9]t\[e aa] \C'u00FC' \e(aq") == "été ü \\(aq"  # an escaped backslash stays text


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff not installed")
def test_every_name_groff_knows_is_resolved_not_only_the_built_in_few():
    from st_retrofit.offline.manpages import _CHARS, special_characters

    names = ["'e", ":u", ",c", "~n", "ss", "Po", "Eu", "OK", "de", "nosuch"]
    assert not set(names) & set(_CHARS)
    assert special_characters(names) == dict(
        zip(names, ["é", "ü", "ç", "ñ", "ß", "£", "€", "✓", "°", ""], strict=True)
    )


def test_a_page_gives_its_summary_and_its_description_whatever_its_title():
    de = parse_page(LS_DE, "ls.1", "de")
    assert de.summary == "Verzeichnisinhalte auflisten"
    assert de.description.split()[:3] == ["Auflistung", "von", "Informationen"]
    ja = parse_page(
        page("CAT", "ファイルを連結して表示する", "ファイルを連結して標準出力に出力する。 " * 3, "説明", "名前"),
        "cat.1",
        "ja",
    )
    assert ja.summary == "ファイルを連結して表示する" and ja.description.startswith("ファイルを連結して")
    # A title not in the table: the third section, where man(7) puts the description.
    other = parse_page(
        page("CAT", "concatenate", "Concatenate files to standard output, one by one.", "KUVAUS"), "c", "fi"
    )
    assert other.description == "Concatenate files to standard output, one by one."
    assert parse_page(".TH X 1\n.SH NAME\nx\n.SH DESCRIPTION\nA long enough description here.\n", "x", "en") is None
    assert parse_page(page("LS", "list", "Too short."), "ls.1", "en") is None
    long = parse_page(page("LS", "list", " ".join(f"w{i}" for i in range(500))), "ls.1", "en", max_words=300)
    assert len(long.description.split()) == 300


def _deb(folder: Path, package: str, pages: dict[str, str], locale: str | None) -> Path:
    root = folder / package
    man = root / "usr" / "share" / "man" / (locale or "")
    for name, source in pages.items():
        section = man / f"man{name.rsplit('.', 1)[1]}"
        section.mkdir(parents=True, exist_ok=True)
        (section / f"{name}.gz").write_bytes(gzip.compress(source.encode(), mtime=0))
    doc = root / "usr" / "share" / "doc" / package
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(f"{package}: GPL-2+ (test)\n")
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0-1\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: t\n"
    )
    deb = folder / "debs" / f"{package}_1.0-1_all.deb"
    deb.parent.mkdir(exist_ok=True)
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)], check=True, capture_output=True)
    return deb


@pytest.fixture
def debs(tmp_path) -> Path:
    words = {
        "en": "files and folders on the disk",
        "de": "Dateien und Ordner auf der Platte",
        "ja": "ディスク上のファイルとフォルダ",
    }
    names = [f"tool{i}.1" for i in range(40)]
    for lang, package, locale in (("en", "manpages", None), ("de", "manpages-de", "de"), ("ja", "manpages-ja", "ja")):
        pages = {n: page(n.split(".")[0].upper(), f"{words[lang]} {n}", f"{n}: {words[lang]}. " * 8) for n in names}
        if lang == "en":
            pages["alias.1"] = ".so man1/tool0.1\n"
        _deb(tmp_path, package, pages, locale)
    link = tmp_path / "manpages" / "usr" / "share" / "man" / "man1" / "link.1.gz"
    os.symlink("tool1.1.gz", link)
    _deb_rebuild = tmp_path / "debs" / "manpages_1.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(tmp_path / "manpages"), str(_deb_rebuild)],
                   check=True, capture_output=True)  # fmt: skip
    return tmp_path / "debs"


def test_the_benchmark_splits_pages_by_name_into_corpus_dev_and_test(debs, tmp_path):
    summary = build(tmp_path / "out", debs=debs, seed=3, dev_fraction=0.25, test_fraction=0.25, min_queries=1)
    out = tmp_path / "out"
    assert summary["pages"] == {"de": 40, "en": 40, "ja": 40}
    assert summary["skipped"] == {"alias link": 1, "include (.so)": 1}
    assert summary["packages"] == {"manpages": "1.0-1", "manpages-de": "1.0-1", "manpages-ja": "1.0-1"}
    assert set(summary["tasks"]["test"]) == {
        "manpages-en",
        "manpages-de",
        "manpages-ja",
        "manpages-de-en",
        "manpages-ja-en",
    }

    parts = {name: part_of(name, 3, 0.25, 0.25) for name in (f"tool{i}.1" for i in range(40))}
    corpus = [json.loads(line) for line in (out / "corpus.jsonl").read_text().splitlines()]
    assert {row["page"] for row in corpus} == {n for n, p in parts.items() if p == "corpus"}
    assert all("\\-" not in row["text"] and "files and folders on the disk tool" not in row["text"] for row in corpus)
    for part in ("dev", "test"):
        queries = [
            json.loads(line) for line in (out / part / "manpages-de-en" / "queries.jsonl").read_text().splitlines()
        ]
        assert {q["_id"].split("/")[1] for q in queries} == {n for n, p in parts.items() if p == part}
        assert all(q["text"].startswith("Dateien und Ordner") for q in queries)
        qrels = (out / part / "manpages-de-en" / "qrels" / "test.tsv").read_text().splitlines()[1:]
        documents = {json.loads(line)["_id"] for line in (out / part / "manpages-de-en" / "corpus.jsonl").open()}
        assert {line.split("\t")[1] for line in qrels} <= documents and all(d.startswith("en/") for d in documents)
    assert (out / "licenses" / "manpages-de.copyright").read_text() == "manpages-de: GPL-2+ (test)\n"


def test_the_same_seed_builds_the_same_files_and_another_seed_another_split(debs, tmp_path):
    build(tmp_path / "a", debs=debs, seed=1, min_queries=1)
    build(tmp_path / "b", debs=debs, seed=1, min_queries=1)
    build(tmp_path / "c", debs=debs, seed=2, min_queries=1)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert (tmp_path / "a" / "corpus.jsonl").read_bytes() != (tmp_path / "c" / "corpus.jsonl").read_bytes()


def test_mteb_reads_a_built_task(debs, tmp_path):
    from st_retrofit.evaluation.mteb import resolve_tasks

    build(tmp_path / "out", debs=debs, seed=0, min_queries=1)
    (task,) = resolve_tasks([str(tmp_path / "out" / "test" / "manpages-de")])
    assert task.metadata.type == "Retrieval"


def test_a_folder_without_debs_is_one_clear_error(tmp_path):
    from st_retrofit.config import ConfigError

    with pytest.raises(ConfigError, match="holds no .deb file"):
        build(tmp_path / "out", debs=tmp_path)


def test_the_manpages_recipe_validates_beside_a_built_benchmark(debs, tmp_path, monkeypatch):
    from st_retrofit.recipe import load_recipe

    build(tmp_path / "data" / "manpages", debs=debs, seed=0, min_queries=1)
    (tmp_path / "recipes").mkdir()
    for name in ("manpages.yaml", "manpages-teacher.yaml"):
        shutil.copy(REPO / "recipes" / name, tmp_path / "recipes" / name)
    monkeypatch.chdir(tmp_path / "recipes")  # paths are read from the recipe's folder, wherever it is run from
    recipe = load_recipe("manpages.yaml")
    assert Path(recipe.synth.corpus.path).resolve() == (tmp_path / "data" / "manpages" / "corpus.jsonl").resolve()
    assert len(recipe.eval.mteb_tasks) == 2
    teacher = load_recipe("manpages-teacher.yaml")
    # The same pairs as the self-teacher recipe (benchmarks/real_text.py compares them on those), another teacher.
    assert teacher.synth == recipe.synth and teacher.section_hash("synth") == recipe.section_hash("synth")
    assert (teacher.mining.teacher, teacher.mining.teacher_dtype) == ("offline:embeddinggemma-300m", "bfloat16")
    assert [t.loss for t in teacher.train.losses] == ["TeacherEmbeddingLoss"]


def test_the_dev_ablations_validate_beside_a_built_benchmark(debs, tmp_path, monkeypatch):
    from st_retrofit.ablate import load_ablation, variant_recipes

    build(tmp_path / "data" / "manpages", debs=debs, seed=0, min_queries=1)
    (tmp_path / "recipes" / "ablations").mkdir(parents=True)
    shutil.copy(REPO / "recipes" / "manpages.yaml", tmp_path / "recipes" / "manpages.yaml")
    for name in MANPAGES_ABLATIONS:
        shutil.copy(REPO / "recipes" / "ablations" / name, tmp_path / "recipes" / "ablations")
    monkeypatch.chdir(tmp_path)  # the ablation's --set paths are read from where it runs, as the README runs it
    ablation = load_ablation(tmp_path / "recipes" / "ablations" / "manpages-dev.yaml")
    variants = variant_recipes(ablation)
    assert [name for name, *_ in variants] == [
        "recipe", "full-fine-tuning", "no-distillation", "in-batch-negatives-only", "round-trip-top-10",
        "self-guided-mask-5",
    ]  # fmt: skip
    assert all(recipe.eval.mteb_tasks == ["data/manpages/dev"] for *_, recipe in variants)  # test stays unseen
    assert ablation.tasks == "*-dev" and ablation.soup == [x.label for x in ablation.x.values]

    shutil.copy(REPO / "recipes" / "manpages-teacher.yaml", tmp_path / "recipes" / "manpages-teacher.yaml")
    variants = dict((name, recipe) for name, *_, recipe in variant_recipes(
        load_ablation(tmp_path / "recipes" / "ablations" / "manpages-teacher-dev.yaml")))  # fmt: skip
    assert variants["self-teacher"].mining.teacher == "offline:multilingual-e5-small"
    assert variants["self-teacher"].train.losses[0].kwargs == {"scale": 100.0, "teacher_scale": 100.0}
    assert (
        variants["no-distillation"].train.losses == []
        and variants["distillation-only"].train.loss == "TeacherEmbeddingLoss"
    )
    assert [t.loss for t in variants["embedding-distillation"].train.losses] == [
        "TeacherEmbeddingLoss",
        "EmbedDistillLoss",
    ]
    assert all(recipe.eval.mteb_tasks == ["data/manpages/dev"] for recipe in variants.values())

    variants = variant_recipes(load_ablation(tmp_path / "recipes" / "ablations" / "manpages-minilm-distill.yaml"))
    assert {recipe.model.base for *_, recipe in variants} == {"offline:all-MiniLM-L6-v2"}
    assert {recipe.mining.teacher for *_, recipe in variants} == {"offline:multilingual-e5-small"}
    assert [[t.loss for t in recipe.train.losses] for *_, recipe in variants] == [
        [], ["TeacherEmbeddingLoss"], ["EmbedDistillLoss"]
    ]  # fmt: skip

"""A real-text multilingual retrieval benchmark from Debian's manual pages, built offline.

People wrote these pages, and translators wrote their localized versions (manpages-l10n, manpages-ja,
manpages-zh); nothing in them comes from st-retrofit's templates. Each page gives one retrieval pair: the query is
the summary of its NAME line (``ls \\- list directory contents``), the document is its DESCRIPTION section (whatever
its localized title), cut to its first words.

Pages are split by page name (``ls.1``), the same way in every language, into three parts:

- ``corpus``: description texts only, no name lines, for retrofitting (``synth.corpus`` reads ``corpus.jsonl``);
- ``dev`` and ``test``: BEIR folders, one task per language (its summaries against its descriptions) and one per
  language into English (its summaries against the English descriptions), which ``eval.mteb_tasks`` and mteb read.

``.deb`` files come from ``apt-get download`` (no install) or a folder the user has; ``dpkg-deb -x`` unpacks them.
The copyright file of every package is kept beside the data. The same inputs and seed give the same files.
Roff is read by a small parser of the ``man`` macros; special characters (``\\('e``, ``\\[aq]``, ``\\(Fo``) are
resolved by groff itself when it is installed (Debian's ``groff-base``; ``summary.json`` names the version), so
that no escape reaches a query or a document.

    st-retrofit benchmark build manpages data/manpages [--debs DIR] [--seed 0]
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import re
import shutil
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from st_retrofit.config import ConfigError
from st_retrofit.files import atomic_write_text

logger = logging.getLogger(__name__)

# Debian package -> the language of its pages ("en" for the originals).
PACKAGES = {
    "manpages": "en", "manpages-dev": "en",
    "manpages-de": "de", "manpages-fr": "fr", "manpages-es": "es", "manpages-it": "it", "manpages-pl": "pl",
    "manpages-pt-br": "pt", "manpages-ru": "ru", "manpages-uk": "uk", "manpages-cs": "cs", "manpages-nl": "nl",
    "manpages-ja": "ja", "manpages-zh": "zh",
}  # fmt: skip
# Programs whose own packages carry the English originals of most translated pages (manpages and manpages-dev hold
# the Linux man-pages project's); only their pages in the languages above are read.
ENGLISH_ORIGINALS = (
    "coreutils", "util-linux", "findutils", "diffutils", "grep", "sed", "tar", "gzip", "bzip2", "procps", "psmisc",
    "e2fsprogs", "man-db", "groff-base", "kmod", "cron", "dpkg", "apt", "passwd", "login", "mount", "fdisk",
    "bsdutils", "file", "bc",
)  # fmt: skip
# The folder under usr/share/man -> language code (the originals sit in man<N>/ directly).
LOCALE_FOLDERS = {"pt_BR": "pt", "zh_CN": "zh", "zh_TW": "zh-Hant"}
# DESCRIPTION in the languages above; a page whose description has another title falls back to the section after
# the synopsis.
DESCRIPTION_TITLES = {
    "DESCRIPTION", "BESCHREIBUNG", "DESCRIPCIÓN", "DESCRIZIONE", "OPIS", "DESCRIÇÃO", "ОПИСАНИЕ", "ОПИС", "POPIS",
    "BESCHRIJVING", "説明", "描述", "说明", "說明", "DESCRIPCION",
}  # fmt: skip
LANGUAGES = {*PACKAGES.values(), "zh-Hant"}
PARTS = ("corpus", "dev", "test")


@dataclass
class ManPage:
    """One parsed page: ``name`` is ``<page>.<section>`` (the same in every language)."""

    name: str
    language: str
    summary: str
    description: str
    package: str = ""


@dataclass
class BuildReport:
    pages: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    skipped: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    packages: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# roff -> text


_FONT = re.compile(r"\\f(\(..|\[[^]]*\]|.)")
_SIZE = re.compile(r"\\s[+-]?\d+")
_STRING = re.compile(r"\\\*(\(..|\[[^]]*\]|.)")
# Motions, colours, marks and drawing (DocBook-made pages bullet their lists with \h'-04'\(bu\h'+03'): layout only.
_LAYOUT = re.compile(r"\\[hvwlLxXSDbo]'[^']*'|\\[mM](\(..|\[[^]]*\]|.)|\\k.|\\[udz]")
_SPECIAL = re.compile(r"\\(\(..|\[[^]]*\]|C'[^']*')")
# Without groff: the commonest special characters (groff's own names, groff_char(7)).
_CHARS = {
    "em": "—", "en": "–", "aq": "'", "dq": '"', "lq": "“", "rq": "”", "oq": "‘", "cq": "’", "bu": "•", "co": "©",
    "rg": "®", "tm": "™", "mu": "×", ">=": "≥", "<=": "≤", "ga": "`", "ti": "~", "ha": "^", "ba": "|", "hy": "-",
    "rs": "\\", "Fo": "«", "Fc": "»",
}  # fmt: skip
_GROFF_CHARS: dict[str, str] = {}
_ALTERNATING = {".BR", ".RB", ".IR", ".RI", ".BI", ".IB"}
_TEXT_MACROS = {".B", ".I", ".SM", ".SB", ".SS", ".IP", ".TQ", ".UR", ".MT", ".Nm", ".Nd"}


def _special_name(escape: str) -> str:
    """``\\('e`` -> ``'e``, ``\\[aq]`` -> ``aq``, ``\\C'u00E9'`` -> ``u00E9``."""
    return escape[2:] if escape[1] == "(" else escape[2:-1] if escape[1] == "[" else escape[3:-1]


def special_characters(names: Iterable[str]) -> dict[str, str]:
    """Each groff special character name (``'e``, ``:u``, ``aq``, ``Fo``, ``u00E9``) as the character it stands
    for, as groff itself prints it to a UTF-8 terminal: groff's table is the authority (hundreds of names and
    composites), asked once per new name. Without groff, the commonest names only; an unknown name prints as
    nothing."""
    names = list(names)
    missing = sorted({name for name in names if name not in _GROFF_CHARS})
    if missing and shutil.which("groff") is not None:
        document = ".nf\n" + "".join(f"{i}:\\[{name}]\n" for i, name in enumerate(missing))
        result = subprocess.run(["groff", "-Tutf8", "-P-cbou"], input=document, capture_output=True, text=True)
        if result.returncode == 0:  # else the built-in names, as without groff
            printed = dict(line.split(":", 1) for line in result.stdout.splitlines() if ":" in line)
            _GROFF_CHARS.update({name: printed.get(str(i), "") for i, name in enumerate(missing)})
    return {name: _GROFF_CHARS.get(name, _CHARS.get(name, "")) for name in names}


def groff_version() -> str | None:
    """``GNU groff version 1.22.4``, or ``None`` without groff (the build then resolves fewer characters)."""
    if shutil.which("groff") is None:
        return None
    result = subprocess.run(["groff", "--version"], capture_output=True, text=True)
    return (result.stdout.splitlines() or [""])[0].strip() or None


def roff_inline(text: str) -> str:
    """One line of roff text without font, size, string and layout escapes, special characters as themselves."""
    text = text.replace(r"\e", "\0")  # an escaped backslash survives the rest
    text = _FONT.sub("", text)
    text = _SIZE.sub("", text)
    text = _STRING.sub("", text)
    text = _LAYOUT.sub("", text)
    escapes = _SPECIAL.findall(text)
    if escapes:
        chars = special_characters(_special_name("\\" + e) for e in escapes)
        text = _SPECIAL.sub(lambda m: chars[_special_name(m.group())], text)
    for escape, char in ((r"\-", "-"), (r"\ ", " "), (r"\~", " "), (r"\0", " "), (r"\&", ""), (r"\%", ""),
                         (r"\|", ""), (r"\^", ""), (r"\c", ""), (r"\,", ""), (r"\/", ""), (r"\:", "")):  # fmt: skip
        text = text.replace(escape, char)
    return text.replace("\0", "\\")


def _macro_arguments(rest: str) -> list[str]:
    """A macro line's arguments: words, or double-quoted strings with spaces."""
    return [a if not a.startswith('"') else a[1:-1] for a in re.findall(r'"[^"]*"|\S+', rest)]


def parse_roff(source: str) -> list[tuple[str, str]]:
    """``[(section title, text)]`` of a man page in ``man`` macros: paragraphs joined, tables and comments left out."""
    sections: list[tuple[str, list[str]]] = []
    in_table = False
    for raw in source.splitlines():
        line = raw.rstrip()
        if line.startswith(('.\\"', "'\\\"", '.\\"')) or line in (".", "'"):
            continue
        if line.startswith(".TS"):
            in_table = True
            continue
        if line.startswith(".TE"):
            in_table = False
            continue
        if in_table:
            continue
        if line.startswith((".SH", ".Sh")):
            title = " ".join(_macro_arguments(line[3:])).strip()
            sections.append((roff_inline(title).strip().upper(), []))
            continue
        if not sections:
            continue
        body = sections[-1][1]
        if line.startswith((".", "'")):
            macro, _, rest = line.partition(" ")
            if macro in _ALTERNATING:
                body.append(roff_inline("".join(_macro_arguments(rest))))
            elif macro in _TEXT_MACROS and rest.strip():
                body.append(roff_inline(" ".join(_macro_arguments(rest))))
            elif macro in (".PP", ".P", ".LP", ".TP", ".HP", ".sp", ".br", ".RS", ".RE", ".IP"):
                body.append("")  # a paragraph break
            continue
        body.append(roff_inline(line))
    return [(title, _paragraphs(lines)) for title, lines in sections]


def _paragraphs(lines: list[str]) -> str:
    paragraphs, current = [], []
    for line in [*lines, ""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    return "\n".join(paragraphs)


def parse_page(source: str, name: str, language: str, max_words: int = 300) -> ManPage | None:
    """The page's summary and description, or ``None`` when it has no usable name line or description."""
    sections = parse_roff(source)
    if len(sections) < 2:
        return None
    name_line = sections[0][1].replace("\n", " ")
    _, separator, summary = _split_name(name_line)
    if not separator or not summary.strip():
        return None
    description = next((text for title, text in sections[1:] if title in DESCRIPTION_TITLES), None)
    if description is None:
        # NAME, SYNOPSIS, DESCRIPTION is the order man(7) prescribes; a title we do not know is the third section.
        description = sections[2][1] if len(sections) > 2 else sections[1][1]
    text = cut_words(description, max_words)
    if text is None:
        return None
    return ManPage(name, language, summary.strip(), text)


def cut_words(text: str, max_words: int, min_words: int = 5) -> str | None:
    """The first ``max_words`` words of ``text`` (``None`` below ``min_words``). Scripts written without spaces
    (Japanese, Chinese) count two characters as a word."""
    words = text.split()
    if words and len(text) / len(words) > 15:  # long runs between spaces: a script without word spaces
        return text[: 2 * max_words].strip() if len(text) >= 2 * min_words else None
    return " ".join(words[:max_words]) if len(words) >= min_words else None


def _split_name(line: str) -> tuple[str, str, str]:
    """``ls - list directory contents`` -> (``ls``, ``-``, ``list directory contents``)."""
    match = re.search(r"\s[-—–]+\s", line)
    if match is None:
        return line, "", ""
    return line[: match.start()], match.group(), line[match.end() :]


# ----------------------------------------------------------------------------------------------------------------
# .deb files -> pages


def download(packages: Iterable[str], folder: Path) -> list[Path]:
    """``apt-get download`` the packages into ``folder`` (nothing is installed)."""
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("apt-get") is None:
        raise ConfigError("--debs", "apt-get is not available here; download the .deb files elsewhere and pass --debs")
    result = subprocess.run(["apt-get", "download", *packages], cwd=folder, capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(
            "packages", f"apt-get download failed ({detail}); run 'apt-get update' first, or pass --debs"
        )
    return sorted(folder.glob("*.deb"))


def unpack(deb: Path, folder: Path) -> Path:
    """``dpkg-deb -x`` the package into ``folder``."""
    if shutil.which("dpkg-deb") is None:
        raise ConfigError("--debs", "dpkg-deb is not available here (Debian's dpkg package unpacks .deb files)")
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(folder)], check=True, capture_output=True)
    return folder


def package_of(deb: Path) -> tuple[str, str]:
    """(package, version) from a ``<name>_<version>_<arch>.deb`` file name."""
    name, version, *_ = deb.stem.split("_")
    return name, version.replace("%3a", ":")


def read_pages(root: Path, package: str, max_words: int, report: BuildReport) -> list[ManPage]:
    """Every page under ``root/usr/share/man`` (links are aliases and ``.so`` pages includes: both left out)."""
    pages = []
    man = root / "usr" / "share" / "man"
    for path in sorted(man.rglob("*.gz")):
        relative = path.relative_to(man).parts
        language = "en" if relative[0].startswith("man") else LOCALE_FOLDERS.get(relative[0], relative[0])
        if language not in LANGUAGES:
            continue
        if path.is_symlink():
            report.skipped["alias link"] += 1
            continue
        try:
            source = gzip.decompress(path.read_bytes()).decode("utf-8")
        except (OSError, UnicodeDecodeError):
            report.skipped["unreadable"] += 1
            continue
        if source.lstrip().startswith(".so "):
            report.skipped["include (.so)"] += 1
            continue
        page = parse_page(source, path.name.removesuffix(".gz"), language, max_words)
        if page is None:
            report.skipped["no name line or description"] += 1
            continue
        page.package = package
        pages.append(page)
        report.pages[language] += 1
    return pages


# ----------------------------------------------------------------------------------------------------------------
# Splits and files


def part_of(name: str, seed: int, dev: float, test: float) -> str:
    """The part a page name falls in, by a hash of name and seed: the same in every language and every build."""
    value = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") / 2**64
    return "dev" if value < dev else "test" if value < dev + test else "corpus"


def write_beir(folder: Path, queries: dict[str, str], corpus: dict[str, str], qrels: dict[str, str]) -> None:
    """A BEIR folder: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/test.tsv`` (what mteb's local tasks read)."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as handle:
        for doc_id, text in sorted(corpus.items()):
            handle.write(json.dumps({"_id": doc_id, "title": "", "text": text}, ensure_ascii=False) + "\n")
    with (folder / "queries.jsonl").open("w", encoding="utf-8") as handle:
        for query_id, text in sorted(queries.items()):
            handle.write(json.dumps({"_id": query_id, "text": text}, ensure_ascii=False) + "\n")
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t1" for q, d in sorted(qrels.items())]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def build(
    output: str | Path,
    debs: str | Path | None = None,
    packages: Iterable[str] = (*PACKAGES, *ENGLISH_ORIGINALS),
    seed: int = 0,
    dev_fraction: float = 0.1,
    test_fraction: float = 0.2,
    max_words: int = 300,
    min_queries: int = 20,
) -> dict:
    """Build the benchmark into ``output`` (see the module docstring) and return its summary (``summary.json``).

    Args:
        debs: a folder of ``.deb`` files; ``None`` downloads ``packages`` with ``apt-get download``.
        seed: seeds the split of page names into corpus, dev and test.
        dev_fraction, test_fraction: shares of page names in dev and test; the rest is the corpus.
        max_words: documents are the description's first words.
        min_queries: a task with fewer queries in a part is left out of that part (and counted).
    """
    output = Path(output)
    with tempfile.TemporaryDirectory(prefix="manpages-") as scratch:
        scratch = Path(scratch)
        if debs is None:
            deb_files = download(packages, scratch / "debs")
        else:
            deb_files = sorted(Path(debs).expanduser().glob("*.deb"))
            if not deb_files:
                raise ConfigError("--debs", f"{debs} holds no .deb file")
        report, pages = BuildReport(), []
        licenses = output / "licenses"
        licenses.mkdir(parents=True, exist_ok=True)
        for deb in deb_files:
            package, version = package_of(deb)
            if package not in PACKAGES and package not in ENGLISH_ORIGINALS:
                logger.warning("Skipping %s: not a package this benchmark reads", deb.name)
                continue
            root = unpack(deb, scratch / package)
            report.packages[package] = version
            copyright_file = root / "usr" / "share" / "doc" / package / "copyright"
            if copyright_file.is_file():
                shutil.copy(copyright_file, licenses / f"{package}.copyright")
            pages += read_pages(root, package, max_words, report)
    return _write(output, pages, report, seed, dev_fraction, test_fraction, min_queries)


def _write(
    output: Path, pages: list[ManPage], report: BuildReport, seed: int, dev: float, test: float, min_queries: int
) -> dict:
    by_language: dict[str, dict[str, ManPage]] = defaultdict(dict)
    for page in pages:  # one page per name and language; a later package does not replace an earlier one
        by_language[page.language].setdefault(page.name, page)
    english = by_language.get("en", {})
    parts = {name: part_of(name, seed, dev, test) for lang in by_language.values() for name in lang}
    tasks: dict[str, dict[str, int]] = {part: {} for part in ("dev", "test")}
    left_out: dict[str, list[str]] = {"dev": [], "test": []}

    corpus_rows = [
        {"id": f"{lang}/{name}", "text": page.description, "language": lang, "page": name}
        for lang, lang_pages in sorted(by_language.items())
        for name, page in sorted(lang_pages.items())
        if parts[name] == "corpus"
    ]
    atomic_write_text(
        output / "corpus.jsonl", "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in corpus_rows)
    )
    for part in ("dev", "test"):
        for lang, lang_pages in sorted(by_language.items()):
            chosen = {name: page for name, page in lang_pages.items() if parts[name] == part}
            targets = [("", lang_pages)] + ([("-en", english)] if lang != "en" else [])
            for suffix, documents in targets:
                queries = {f"{lang}/{n}": p.summary for n, p in chosen.items() if n in documents}
                name = f"manpages-{lang}{suffix}"
                if len(queries) < min_queries:
                    left_out[part].append(f"{name} ({len(queries)} queries)")
                    continue
                target = "en" if suffix else lang
                corpus = {f"{target}/{n}": p.description for n, p in documents.items() if parts[n] == part}
                qrels = {q: f"{target}/{q.split('/', 1)[1]}" for q in queries}
                write_beir(output / part / name, queries, corpus, qrels)
                tasks[part][name] = len(queries)
    summary = {
        "seed": seed,
        "fractions": {"dev": dev, "test": test, "corpus": round(1 - dev - test, 4)},
        "packages": dict(sorted(report.packages.items())),
        "pages": dict(sorted(report.pages.items())),
        "skipped": dict(sorted(report.skipped.items())),
        "corpus_documents": len(corpus_rows),
        "tasks": tasks,
        "left_out": left_out,
        "licenses": "licenses/<package>.copyright: the Debian copyright file of each package (GPL and others)",
        "special_characters": groff_version() or "the built-in table of the commonest (groff not installed)",
    }
    atomic_write_text(output / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False))
    logger.info(
        "manpages: %d corpus documents; dev tasks %d, test tasks %d; pages per language %s",
        len(corpus_rows), len(tasks["dev"]), len(tasks["test"]), summary["pages"],
    )  # fmt: skip
    return summary

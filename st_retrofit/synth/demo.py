"""The embedded demo corpus: multilingual query/document pairs rendered from structured facts.

Every fact is generated from the seed, so the data needs no download and is the same on every machine. Each
entity is a (fictional) town with a region, a river, a founding year, a population and a main industry; its name
is built from syllables and written in the script of each language (Latin, Cyrillic, Katakana, Han). For every
language a document template states the facts and query templates ask for one of them, by name or by a
description without it ("which town on the river X was founded in Y?"). Train and held-out splits use disjoint towns.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# (latin, cyrillic, katakana, han) spellings of the syllables that names are built from.
SYLLABLES = [
    ("ka", "ка", "カ", "卡"), ("ki", "ки", "キ", "基"), ("ko", "ко", "コ", "科"), ("ma", "ма", "マ", "马"),
    ("mi", "ми", "ミ", "米"), ("mo", "мо", "モ", "莫"), ("na", "на", "ナ", "纳"), ("ni", "ни", "ニ", "尼"),
    ("no", "но", "ノ", "诺"), ("ra", "ра", "ラ", "拉"), ("ri", "ри", "リ", "里"), ("ro", "ро", "ロ", "罗"),
    ("ta", "та", "タ", "塔"), ("to", "то", "ト", "托"), ("sa", "са", "サ", "萨"), ("se", "се", "セ", "塞"),
    ("so", "со", "ソ", "索"), ("be", "бе", "ベ", "贝"), ("da", "да", "ダ", "达"), ("lu", "лу", "ル", "卢"),
    ("ve", "ве", "ヴェ", "维"), ("pa", "па", "パ", "帕"), ("du", "ду", "ドゥ", "杜"), ("mu", "му", "ム", "穆"),
]  # fmt: skip
SCRIPT_INDEX = {"latin": 0, "cyrillic": 1, "katakana": 2, "han": 3}

INDUSTRIES = {
    "en": ["fishing", "textiles", "wine making", "mining", "shipbuilding", "software", "tourism", "forestry"],
    "de": ["Fischerei", "Textilindustrie", "Weinbau", "Bergbau", "Schiffbau", "Software", "Tourismus", "Forstwirtschaft"],
    "fr": ["la pêche", "le textile", "la viticulture", "les mines", "la construction navale", "le logiciel",
           "le tourisme", "la sylviculture"],
    "es": ["la pesca", "la industria textil", "la viticultura", "la minería", "la construcción naval", "el software",
           "el turismo", "la silvicultura"],
    "ru": ["рыболовство", "текстильная промышленность", "виноделие", "горное дело", "судостроение",
           "программное обеспечение", "туризм", "лесное хозяйство"],
    "ja": ["漁業", "繊維産業", "ワイン造り", "鉱業", "造船業", "ソフトウェア産業", "観光業", "林業"],
    "zh": ["渔业", "纺织业", "葡萄酒酿造", "采矿业", "造船业", "软件业", "旅游业", "林业"],
}  # fmt: skip


@dataclass(frozen=True)
class LanguageTemplates:
    """How one language writes the facts: name script, number format, one document and one template per query kind."""

    script: str
    thousands_sep: str
    document: str
    queries: dict[str, str]


TEMPLATES: dict[str, LanguageTemplates] = {
    "en": LanguageTemplates(
        "latin", ",",
        "{name} is a town in the {region} region on the {river} river. It was founded in {year} and has "
        "{population} inhabitants. Its economy is based on {industry}.",
        {"year": "When was {name} founded?", "population": "How many people live in {name}?",
         "industry": "What is the main industry of {name}?",
         "describe_year": "Which town on the {river} river was founded in {year}?",
         "describe_industry": "Which town in the {region} region is known for {industry}?",
         "describe_population": "Which town on the {river} river has {population} inhabitants?"},
    ),
    "de": LanguageTemplates(
        "latin", ".",
        "{name} ist eine Stadt in der Region {region} am Fluss {river}. Sie wurde {year} gegründet und hat "
        "{population} Einwohner. Ihre Wirtschaft beruht auf {industry}.",
        {"year": "Wann wurde {name} gegründet?", "population": "Wie viele Menschen leben in {name}?",
         "industry": "Was ist der wichtigste Wirtschaftszweig von {name}?",
         "describe_year": "Welche Stadt am Fluss {river} wurde {year} gegründet?",
         "describe_industry": "Welche Stadt in der Region {region} ist für {industry} bekannt?",
         "describe_population": "Welche Stadt am Fluss {river} hat {population} Einwohner?"},
    ),
    "fr": LanguageTemplates(
        "latin", " ",
        "{name} est une ville de la région de {region}, sur la rivière {river}. Elle a été fondée en {year} et "
        "compte {population} habitants. Son économie repose sur {industry}.",
        {"year": "Quand {name} a-t-elle été fondée ?", "population": "Combien d'habitants compte {name} ?",
         "industry": "Quelle est la principale activité économique de {name} ?",
         "describe_year": "Quelle ville sur la rivière {river} a été fondée en {year} ?",
         "describe_industry": "Quelle ville de la région de {region} est connue pour {industry} ?",
         "describe_population": "Quelle ville sur la rivière {river} compte {population} habitants ?"},
    ),
    "es": LanguageTemplates(
        "latin", ".",
        "{name} es una ciudad de la región de {region}, a orillas del río {river}. Fue fundada en {year} y tiene "
        "{population} habitantes. Su economía se basa en {industry}.",
        {"year": "¿Cuándo fue fundada {name}?", "population": "¿Cuántas personas viven en {name}?",
         "industry": "¿Cuál es la industria principal de {name}?",
         "describe_year": "¿Qué ciudad a orillas del río {river} fue fundada en {year}?",
         "describe_industry": "¿Qué ciudad de la región de {region} es conocida por {industry}?",
         "describe_population": "¿Qué ciudad a orillas del río {river} tiene {population} habitantes?"},
    ),
    "ru": LanguageTemplates(
        "cyrillic", " ",
        "{name} — город в регионе {region} на реке {river}. Он был основан в {year} году, в нём живут "
        "{population} человек. Основа его экономики — {industry}.",
        {"year": "Когда был основан город {name}?", "population": "Сколько людей живёт в городе {name}?",
         "industry": "Какая главная отрасль экономики города {name}?",
         "describe_year": "Какой город на реке {river} был основан в {year} году?",
         "describe_industry": "Какой город в регионе {region} специализируется на отрасли «{industry}»?",
         "describe_population": "В каком городе на реке {river} живут {population} человек?"},
    ),
    "ja": LanguageTemplates(
        "katakana", ",",
        "{name}は{region}地方の{river}川沿いにある町です。{year}年に創設され、人口は{population}人です。"
        "経済の中心は{industry}です。",
        {"year": "{name}はいつ創設されましたか？", "population": "{name}の人口は何人ですか？",
         "industry": "{name}の主な産業は何ですか？",
         "describe_year": "{year}年に創設された{river}川沿いの町はどこですか？",
         "describe_industry": "{region}地方で{industry}が盛んな町はどこですか？",
         "describe_population": "{river}川沿いで人口が{population}人の町はどこですか？"},
    ),
    "zh": LanguageTemplates(
        "han", "",
        "{name}是位于{region}地区{river}河畔的一座城镇。它建于{year}年，人口为{population}人。当地经济以{industry}为主。",
        {"year": "{name}是哪一年建立的？", "population": "{name}有多少人口？",
         "industry": "{name}的主要产业是什么？",
         "describe_year": "哪座位于{river}河畔的城镇建于{year}年？",
         "describe_industry": "{region}地区哪座城镇以{industry}为主？",
         "describe_population": "{river}河畔哪座城镇的人口为{population}人？"},
    ),
}  # fmt: skip

LANGUAGES = tuple(TEMPLATES)
# Three lookups by name and three descriptions without it: the mix of task kinds is what training learns from.
QUERY_KINDS = tuple(TEMPLATES["en"].queries)


@dataclass(frozen=True)
class Town:
    """One generated entity; names are syllable indices so that every script spells the same name."""

    id: int
    name: tuple[int, ...]
    region: tuple[int, ...]
    river: tuple[int, ...]
    year: int
    population: int
    industry: int


def spell(syllables: tuple[int, ...], script: str) -> str:
    text = "".join(SYLLABLES[i][SCRIPT_INDEX[script]] for i in syllables)
    return text.capitalize() if script in ("latin", "cyrillic") else text


def format_number(value: int, sep: str) -> str:
    return f"{value:,}".replace(",", sep)


def generate_towns(count: int, seed: int) -> list[Town]:
    """``count`` towns with distinct names; deterministic for ``seed``."""
    rng = random.Random(seed)
    seen: set[tuple[int, ...]] = set()
    towns = []
    while len(towns) < count:
        name = tuple(rng.randrange(len(SYLLABLES)) for _ in range(rng.choice((2, 3, 3))))
        if name in seen:
            continue
        seen.add(name)
        towns.append(
            Town(
                id=len(towns),
                name=name,
                region=tuple(rng.randrange(len(SYLLABLES)) for _ in range(2)),
                river=tuple(rng.randrange(len(SYLLABLES)) for _ in range(2)),
                year=rng.randrange(1150, 1950),
                population=rng.randrange(20, 2000) * 100,
                industry=rng.randrange(len(INDUSTRIES["en"])),
            )
        )
    return towns


def render(town: Town, language: str, query_kind: str) -> dict[str, str | int]:
    """One row: the query of ``query_kind`` about ``town`` and the document stating its facts."""
    tpl = TEMPLATES[language]
    fields = {
        "name": spell(town.name, tpl.script),
        "region": spell(town.region, tpl.script),
        "river": spell(town.river, tpl.script),
        "year": town.year,
        "population": format_number(town.population, tpl.thousands_sep),
        "industry": INDUSTRIES[language][town.industry],
    }
    return {
        "query": tpl.queries[query_kind].format(**fields),
        "document": tpl.document.format(**fields),
        "language": language,
        "entity_id": town.id,
        "template": f"town/{query_kind}",
    }


def build_demo_dataset(
    languages: list[str] | tuple[str, ...] = LANGUAGES,
    train_entities: int = 120,
    eval_entities: int = 40,
    queries_per_document: int = 1,
    seed: int = 42,
):
    """Build the demo ``DatasetDict`` with ``train`` and ``eval`` splits of disjoint towns.

    Args:
        languages: language codes, a subset of :data:`LANGUAGES`.
        train_entities: towns in the train split; each yields one document per language.
        eval_entities: towns in the held-out split.
        queries_per_document: distinct query kinds drawn per (town, language), at most ``len(QUERY_KINDS)``.
        seed: everything is a function of the seed.

    Returns:
        ``datasets.DatasetDict`` whose splits have the columns ``query``, ``document``, ``language``,
        ``entity_id`` and ``template``.

    Example::

        from st_retrofit.synth import build_demo_dataset

        data = build_demo_dataset(languages=["en", "ja"], train_entities=10, eval_entities=5)
        data["train"][0]["query"]  # e.g. 'When was Mikaro founded?'
    """
    from datasets import Dataset, DatasetDict

    unknown = [lang for lang in languages if lang not in TEMPLATES]
    if unknown:
        raise ValueError(f"unknown demo language(s) {unknown}; available: {list(LANGUAGES)}")
    kinds = list(QUERY_KINDS)
    if not 1 <= queries_per_document <= len(kinds):
        raise ValueError(f"queries_per_document must be in [1, {len(kinds)}], got {queries_per_document}")

    towns = generate_towns(train_entities + eval_entities, seed)
    rng = random.Random(seed + 1)
    splits = {"train": towns[:train_entities], "eval": towns[train_entities:]}
    out = {}
    for split, split_towns in splits.items():
        rows = []
        for town in split_towns:
            for language in languages:
                for kind in rng.sample(kinds, queries_per_document):
                    rows.append(render(town, language, kind))
        out[split] = Dataset.from_list(rows)
    return DatasetDict(out)

"""What st-retrofit knows about text, for every stage: language codes (normalization to the shortest standard code,
English names for prompts, language ID) and the normalization that decides when two texts are one.

Corpora name languages in many ways (``de``, ``de-DE``, ``deu``, ``deu-Latn`` and ``cmn-Hans`` as mteb does).
Everything in st-retrofit compares codes normalized by ``langcodes`` (BCP 47, macrolanguages folded: ``cmn`` is
``zh``); names come from its ``language_data`` tables; identification uses py3langid (the langid.py model, 97
languages, bundled with the package, so it works offline).
"""

from __future__ import annotations

import functools
import re
import unicodedata

# Languages langid cannot tell apart reliably from a sentence; a prediction inside the group counts as a match.
# (langid's regional labels such as ext, an, vec, wuu are rarely what a corpus means.)
_CLOSE = [
    {"no", "nb", "nn", "da"}, {"hr", "bs", "sr"}, {"ms", "id"}, {"zh", "wuu", "yue"}, {"ar", "arz", "ary"},
    {"es", "ext", "an", "gl"}, {"pt", "gl"}, {"it", "vec", "lij"}, {"fr", "wa"},
]  # fmt: skip


@functools.cache
def normalize_language(code: str) -> str:
    """``"de-DE"``, ``"deu"``, ``"deu-Latn"``, ``"ger"`` and ``"DE"`` all become ``"de"``, ``"cmn-Hans"`` becomes
    ``"zh"``; a code that is no language tag is lowercased."""
    import langcodes

    tag = code.strip().replace("_", "-")
    try:
        return langcodes.Language.get(langcodes.standardize_tag(tag, macro=True)).language or tag.lower()
    except (langcodes.LanguageTagError, ValueError):
        return tag.split("-")[0].lower()


@functools.cache
def language_name(code: str) -> str:
    """The English name used in prompts (``"German"``); the code itself when no name is known (or without the
    ``language_data`` tables of the ``synth`` extra)."""
    import langcodes

    normalized = normalize_language(code)
    try:
        name = langcodes.Language.get(normalized).display_name("en")
    except (ImportError, LookupError, ValueError):
        return code
    return code if name.startswith("Unknown language") else name


def same_language(expected: str, predicted: str) -> bool:
    expected, predicted = normalize_language(expected), normalize_language(predicted)
    return expected == predicted or any(expected in group and predicted in group for group in _CLOSE)


@functools.cache
def _identifier():
    from st_retrofit.extras import require_module

    langid = require_module("py3langid.langid", "language identification")
    MODEL_FILE, LanguageIdentifier = langid.MODEL_FILE, langid.LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def identify_language(text: str) -> tuple[str, float]:
    """``(code, probability)`` of the most likely language of ``text``, by py3langid."""
    code, probability = _identifier().classify(text)
    return code, float(probability)


_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """NFKC, case-folded, without punctuation or symbols, whitespace collapsed: ``"Paris, France."`` and
    ``"paris  france"`` are one text."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(ch)[0] in "PSZC" else ch for ch in text)
    return _SPACE.sub(" ", text).strip()

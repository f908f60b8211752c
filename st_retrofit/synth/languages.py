"""Language codes: normalization to ISO 639-1 where one exists, English names for prompts, and language ID.

Corpora name languages in many ways (``de``, ``de-DE``, ``deu``, ``deu-Latn`` as mteb does). Everything in
``st_retrofit.synth`` compares normalized codes, and identification uses py3langid (the langid.py model, 140
languages, bundled with the package, so it works offline).
"""

from __future__ import annotations

import functools

# ISO 639-3 / 639-2B codes of languages that have a 639-1 code, for the ones corpora commonly use.
_ISO3_TO_1 = dict(
    pair.split(":")
    for pair in (
        "afr:af amh:am ara:ar asm:as aze:az bel:be bul:bg ben:bn bre:br bos:bs cat:ca ces:cs cze:cs cym:cy wel:cy "
        "dan:da deu:de ger:de ell:el gre:el eng:en epo:eo spa:es est:et eus:eu baq:eu fas:fa per:fa fin:fi "
        "fra:fr fre:fr fry:fy gle:ga gla:gd glg:gl guj:gu hau:ha heb:he hin:hi hrv:hr hat:ht hun:hu hye:hy arm:hy "
        "ind:id ibo:ig isl:is ice:is ita:it jpn:ja jav:jv kat:ka geo:ka kaz:kk khm:km kan:kn kor:ko kur:ku kir:ky "
        "lat:la lug:lg lin:ln lao:lo lit:lt lav:lv mlg:mg mkd:mk mac:mk mal:ml mon:mn mar:mr msa:ms may:ms mya:my "
        "bur:my nep:ne nld:nl dut:nl nor:no nob:no nno:nn orm:om ori:or pan:pa pol:pl pus:ps por:pt que:qu ron:ro "
        "rum:ro rus:ru san:sa sin:si slk:sk slo:sk slv:sl som:so sqi:sq alb:sq srp:sr swe:sv swa:sw tam:ta tel:te "
        "tha:th tgl:tl fil:tl tur:tr uig:ug ukr:uk urd:ur uzb:uz vie:vi xho:xh yor:yo zho:zh chi:zh cmn:zh zul:zu"
    ).split()
)

LANGUAGE_NAMES = dict(
    pair.split(":")
    for pair in (
        "af:Afrikaans am:Amharic ar:Arabic az:Azerbaijani be:Belarusian bg:Bulgarian bn:Bengali bs:Bosnian "
        "ca:Catalan cs:Czech cy:Welsh da:Danish de:German el:Greek en:English eo:Esperanto es:Spanish et:Estonian "
        "eu:Basque fa:Persian fi:Finnish fr:French ga:Irish gl:Galician gu:Gujarati ha:Hausa he:Hebrew hi:Hindi "
        "hr:Croatian hu:Hungarian hy:Armenian id:Indonesian ig:Igbo is:Icelandic it:Italian ja:Japanese "
        "jv:Javanese ka:Georgian kk:Kazakh km:Khmer kn:Kannada ko:Korean ky:Kyrgyz la:Latin lo:Lao lt:Lithuanian "
        "lv:Latvian mk:Macedonian ml:Malayalam mn:Mongolian mr:Marathi ms:Malay my:Burmese ne:Nepali nl:Dutch "
        "no:Norwegian pa:Punjabi pl:Polish ps:Pashto pt:Portuguese ro:Romanian ru:Russian si:Sinhala sk:Slovak "
        "sl:Slovenian so:Somali sq:Albanian sr:Serbian sv:Swedish sw:Swahili ta:Tamil te:Telugu th:Thai "
        "tl:Tagalog tr:Turkish uk:Ukrainian ur:Urdu uz:Uzbek vi:Vietnamese xh:Xhosa yo:Yoruba zh:Chinese zu:Zulu"
    ).split()
)

# Languages langid cannot tell apart reliably from a sentence; a prediction inside the group counts as a match.
# (langid's regional labels such as ext, an, vec, wuu are rarely what a corpus means.)
_CLOSE = [
    {"no", "nn", "da"}, {"hr", "bs", "sr"}, {"ms", "id"}, {"zh", "wuu", "yue"}, {"ar", "arz", "ary"},
    {"es", "ext", "an", "gl"}, {"pt", "gl"}, {"it", "vec", "lij"}, {"fr", "wa"},
]  # fmt: skip


def normalize_language(code: str) -> str:
    """``"de-DE"``, ``"deu"``, ``"deu-Latn"`` and ``"DE"`` all become ``"de"``; unknown codes are lowercased."""
    base = code.strip().replace("_", "-").split("-")[0].lower()
    return _ISO3_TO_1.get(base, base)


def language_name(code: str) -> str:
    """The English name used in prompts (``"German"``); the code itself when no name is known."""
    return LANGUAGE_NAMES.get(normalize_language(code), code)


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

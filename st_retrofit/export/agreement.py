"""How close an exported model's embeddings are to the torch model's: cosine per text, mean and minimum."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

# Short and long texts in the scripts the offline models meet (Latin with diacritics, Cyrillic, CJK), written for
# this check: an int8 graph's error grows with length and with rare tokens, so both are here.
SAMPLE_TEXTS = (
    "How do I list the files in a directory, newest first?",
    "ls lists information about the files in the current directory, sorted alphabetically unless told otherwise.",
    "Wie komprimiere ich eine Datei, ohne das Original zu löschen?",
    "gzip verkleinert die angegebenen Dateien mit dem Lempel-Ziv-Verfahren und ersetzt jede durch eine .gz-Datei.",
    "Comment afficher les dernières lignes d'un journal pendant qu'il grandit ?",
    "tail affiche la fin de chaque fichier ; avec -f, il attend et affiche les lignes ajoutées.",
    "¿Cómo busco una cadena de texto en todos los archivos de un proyecto?",
    "grep busca en los archivos indicados las líneas que coinciden con un patrón y las muestra.",
    "Come cambio i permessi di un file?",
    "chmod modifica i bit di accesso di ciascun file secondo la modalità indicata, simbolica o ottale.",
    "Como vejo quanto espaço livre resta no disco?",
    "df mostra o espaço usado e disponível em cada sistema de ficheiros montado.",
    "Hoe kopieer ik een map met alle submappen?",
    "cp kopieert bestanden en mappen; met -r ook alles wat eronder ligt.",
    "Jak zakończyć proces, który nie odpowiada?",
    "kill wysyła sygnał do procesów o podanych identyfikatorach; domyślnie jest to SIGTERM.",
    "Как узнать, какие процессы занимают больше всего памяти?",
    "top показывает работающие процессы в реальном времени и сортирует их по загрузке процессора.",
    "Як створити архів з кількох каталогів?",
    "tar зберігає багато файлів в одному архіві та відновлює їх з нього.",
    "ディレクトリの中のファイルを日付順に並べるには？",
    "find はディレクトリ階層をたどり、条件に合うファイルを探して表示する。",
    "如何查看文件的最后几行？",
    "sort 将文本文件的各行排序后输出到标准输出，可以按数字或按字段排序。",
)


def cosine_agreement(
    reference: SentenceTransformer, candidate: SentenceTransformer, texts: Sequence[str] = SAMPLE_TEXTS,
    batch_size: int = 8,
) -> dict[str, float]:  # fmt: skip
    """``{"mean": ..., "min": ...}`` cosine between the two models' document embeddings of ``texts`` (each model
    with its own document prompt), and the same for query embeddings folded in."""
    import numpy as np

    cosines = []
    for encode in ("encode_query", "encode_document"):
        a = getattr(reference, encode)(list(texts), batch_size=batch_size, convert_to_numpy=True)
        b = getattr(candidate, encode)(list(texts), batch_size=batch_size, convert_to_numpy=True)
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        cosines.append((a * b).sum(axis=1))
    both = np.concatenate(cosines)
    return {"mean": round(float(both.mean()), 5), "min": round(float(both.min()), 5), "texts": len(texts)}

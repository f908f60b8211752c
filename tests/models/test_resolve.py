from __future__ import annotations

import pytest

from st_retrofit.models import ModelNotFoundError, base_model_id, check_model_name, load_model, resolve_model_path


def test_offline_minilm_loads_from_its_package():
    model = load_model("offline:all-MiniLM-L6-v2", device="cpu")
    assert model.get_embedding_dimension() == 384
    assert model.model_card_data.base_model == "sentence-transformers/all-MiniLM-L6-v2"


def test_unknown_offline_name_lists_the_known_ones():
    with pytest.raises(ModelNotFoundError, match="offline:all-MiniLM-L6-v2"):
        check_model_name("offline:bert-huge")


def test_local_folder_is_used_as_is(tiny_model_path):
    assert resolve_model_path(str(tiny_model_path)) == str(tiny_model_path)
    assert base_model_id(str(tiny_model_path)) is None


def test_missing_folder_is_reported():
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        check_model_name("./models/not-here")


def test_file_instead_of_folder_is_reported(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        check_model_name(str(path))


def test_malformed_hub_id_is_reported():
    with pytest.raises(ModelNotFoundError, match="neither"):
        check_model_name("org name with spaces")


def test_uncached_hub_id_is_reported_when_offline():
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE=1"):
        check_model_name("intfloat/multilingual-e5-large")


def test_hub_id_is_passed_through_unchanged(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert resolve_model_path("intfloat/multilingual-e5-large") == "intfloat/multilingual-e5-large"
    assert base_model_id("intfloat/multilingual-e5-large") == "intfloat/multilingual-e5-large"


def test_embeddinggemma_is_checked_without_fetching_it(tmp_path, monkeypatch):
    """Not assembled yet: the name is good wherever pip can fetch it; without pip, one line says so."""
    import importlib.util

    monkeypatch.setenv("ST_RETROFIT_CACHE", str(tmp_path))
    check_model_name("offline:embeddinggemma-300m")  # nothing downloaded by a check
    assert not (tmp_path / "models").exists()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pip" else real(name, *a))
    with pytest.raises(ModelNotFoundError, match="fetched with pip on first use; install pip"):
        check_model_name("offline:embeddinggemma-300m")


def test_built_folder_finds_only_what_is_there_and_builds_nothing(tmp_path, monkeypatch, tiny_model_path):
    from st_retrofit.models.resolve import built_folder

    monkeypatch.setenv("ST_RETROFIT_CACHE", str(tmp_path / "cache"))
    assert built_folder("offline:multilingual-e5-small") is None  # not rebuilt in this empty cache
    assert built_folder("offline:embeddinggemma-300m") is None  # not assembled
    assert not (tmp_path / "cache").exists()
    assert built_folder(str(tiny_model_path)) == tiny_model_path
    assert built_folder("org/some-hub-model") is None


def test_lora_targets_follow_peft_matching_by_name_or_dotted_suffix(tiny_model_path):
    from st_retrofit.config import ConfigError
    from st_retrofit.models.config import check_lora_targets

    check_lora_targets(str(tiny_model_path), ["query", "attention.self.value"])  # peft accepts both
    with pytest.raises(ConfigError, match=r"no linear layer named 'self.qeury'"):
        check_lora_targets(str(tiny_model_path), ["self.qeury"])


def test_a_hub_id_that_cannot_be_checked_offline_is_one_warning(monkeypatch, caplog):
    """No network and no HF_HUB_OFFLINE: the name passes (the run may still download it), and says it was not
    checked, once."""
    import logging

    from huggingface_hub import HfApi

    from st_retrofit.models.resolve import check_model_name

    def unreachable(self, repo_id, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(HfApi, "model_info", unreachable)
    with caplog.at_level(logging.WARNING, logger="st_retrofit"):
        check_model_name("some-org/unreachable-model-for-this-test")
        check_model_name("some-org/unreachable-model-for-this-test")
    warnings = [r.getMessage() for r in caplog.records if "Cannot check Hub" in r.getMessage()]
    assert warnings == [
        "Cannot check Hub model some-org/unreachable-model-for-this-test: the Hub is unreachable; the run will have "
        "to download it unless it is cached (HF_HUB_OFFLINE=1 skips the Hub and refuses what is not cached)"
    ]

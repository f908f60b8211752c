"""Publishing with the real huggingface_hub client against a Hub-compatible server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest
from huggingface_hub import HfApi, constants, snapshot_download
from sentence_transformers import SentenceTransformer

from st_retrofit.publish import PublishError, build_release_folder, push_release
from st_retrofit.recipe import recipe_from_dict

from .hub_server import LFS_THRESHOLD, HubServer

TOKEN = "hf_test_publish_token_0123456789"


@pytest.fixture
def hub(monkeypatch):
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        # The client reads these at import time; the test flips them for this server: HTTP on, and the Git LFS
        # upload path instead of Xet (which the real Hub uses when hf_xet is installed).
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield server


@pytest.fixture
def release(tiny_recipe_data, tiny_model_path, tmp_path):
    data = {**tiny_recipe_data, "publish": {"repo_id": "test-org/tiny-retrofit", "dry_run": True,
                                            "require_eval": False}}  # fmt: skip
    return build_release_folder(recipe_from_dict(data), tiny_model_path, None, tmp_path / "release")


def test_publish_uploads_weights_through_lfs_in_one_commit_and_the_model_loads_back(
    hub, release, tmp_path, caplog, capsys
):
    caplog.set_level(logging.DEBUG)
    weights = release / "model.safetensors"
    assert weights.stat().st_size > LFS_THRESHOLD
    url = push_release(release, "test-org/tiny-retrofit", private=True)

    repo = hub.state.repos["test-org/tiny-retrofit"]
    assert repo["private"] and len(repo["commits"]) == 1 and url.endswith(repo["commits"][0]["sha"])
    files = repo["commits"][0]["files"]
    assert files["model.safetensors"][0] == "lfs" and files["README.md"][0] == "regular"
    assert set(files) == {p.relative_to(release).as_posix() for p in release.rglob("*") if p.is_file()}
    assert set(hub.state.tokens_seen) == {TOKEN}  # the token reached the server, as a Bearer header

    local = snapshot_download("test-org/tiny-retrofit", endpoint=hub.endpoint, cache_dir=tmp_path / "hf-cache")
    model = SentenceTransformer(local, device="cpu")
    expected = SentenceTransformer(str(release), device="cpu").encode(["Когда был основан город Микаро?"])
    assert model.encode(["Когда был основан город Микаро?"]).tolist() == expected.tolist()

    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err + caplog.text
    assert not any(TOKEN.encode() in p.read_bytes() for p in release.rglob("*") if p.is_file())


def test_a_server_error_mid_upload_publishes_nothing_and_a_retry_succeeds(hub, release):
    hub.fail_next("commit", 500)  # the LFS upload went through; the commit that would publish it fails
    with pytest.raises(Exception, match="500|injected"):
        push_release(release, "test-org/tiny-retrofit")
    repo = hub.state.repos["test-org/tiny-retrofit"]
    assert repo["commits"] == []  # no half-published revision
    weights = hashlib.sha256((release / "model.safetensors").read_bytes()).hexdigest()
    assert weights in hub.state.lfs  # the weights wait in LFS storage, in no revision

    url = push_release(release, "test-org/tiny-retrofit")
    assert len(repo["commits"]) == 1 and url.endswith(repo["commits"][0]["sha"])
    assert "model.safetensors" in repo["commits"][0]["files"]


def test_a_file_that_differs_on_the_hub_is_named(hub, release):
    push_release(release, "test-org/tiny-retrofit")
    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    commit = hub.state.repos["test-org/tiny-retrofit"]["commits"][-1]
    commit["files"]["README.md"] = ("regular", b"someone else's card")
    from st_retrofit.publish.release import verify_upload

    with pytest.raises(PublishError, match=r"README.md \(hash differs\)"):
        verify_upload(api, "test-org/tiny-retrofit", release, commit["sha"])
    (release / "extra.json").write_text(json.dumps({"late": True}))
    with pytest.raises(PublishError, match=r"extra.json \(missing\)"):
        verify_upload(api, "test-org/tiny-retrofit", release, commit["sha"])


def test_publish_a_run_folder_from_the_command_line(hub, tiny_recipe_data, tmp_path, capsys):
    from st_retrofit.cli import main
    from st_retrofit.pipeline import run_pipeline

    recipe = recipe_from_dict(tiny_recipe_data)
    run_pipeline(recipe, stages=["synth", "mine", "train", "eval"])
    run_dir = str(recipe.run_dir)

    assert main(["publish", run_dir, "--repo", "test-org/from-cli", "--dry-run"]) == 0
    assert "test-org/from-cli" not in hub.state.repos  # a dry run writes the folder and pushes nothing
    release = recipe.run_dir / "publish" / "release"
    assert (release / "README.md").is_file() and (release / "manifest.json").is_file()

    # A score on a task mteb knows by name, as the eval stage would have written it: the leaderboard submission.
    import mteb

    task = mteb.get_task("NFCorpus")
    scores = {"test": {"default": {"main_score": 0.31, "ndcg_at_10": 0.31}}}
    results = recipe.run_dir / "eval" / "mteb" / "results" / "st-retrofit__tiny" / "no_revision_available"
    results.mkdir(parents=True)
    mteb.TaskResult.from_task_results(task, scores, evaluation_time=1.0).to_disk(results / "NFCorpus.json")
    submission = tmp_path / "submission"
    args = ["publish", run_dir, "--repo", "test-org/from-cli", "--private", "--mteb-submission", str(submission)]
    assert main([*args, "--set", "publish.license=mit"]) == 0
    repo = hub.state.repos["test-org/from-cli"]
    revision = repo["commits"][0]["sha"]  # the submission names the revision that was pushed
    assert (submission / "results" / "results" / "test-org__from-cli" / revision / "NFCorpus.json").is_file()
    assert ".eval_results/NFCorpus.yaml" in repo["commits"][0]["files"]
    assert repo["private"] and len(repo["commits"]) == 1
    assert set(repo["commits"][0]["files"]) == {p.relative_to(release).as_posix() for p in release.rglob("*")
                                                 if p.is_file()}  # fmt: skip
    pushed = json.loads((recipe.run_dir / "publish" / "pushed.json").read_text())
    assert pushed["repo_id"] == "test-org/from-cli"
    assert TOKEN not in capsys.readouterr().out

    (tmp_path / "not-a-run").mkdir()
    assert main(["publish", str(tmp_path / "not-a-run"), "--repo", "test-org/x"]) == 2
    assert "not a run folder" in capsys.readouterr().err

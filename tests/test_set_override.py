"""``--set key.path=value`` with list indices: the ablation files and the command line reach into train.losses."""

from __future__ import annotations

import pytest

from st_retrofit.config import ConfigError, set_override


def _data():
    return {"train": {"loss": "RetrofitInfoNCELoss", "losses": [{"loss": "TeacherEmbeddingLoss", "kwargs": {}}]}}


def test_an_index_reaches_into_a_list_entry():
    data = _data()
    set_override(data, "train.losses[0].kwargs.teacher_scale=20.0")
    set_override(data, "train.losses[0].weight=0.5")
    assert data["train"]["losses"] == [
        {"loss": "TeacherEmbeddingLoss", "kwargs": {"teacher_scale": 20.0}, "weight": 0.5}
    ]


def test_one_past_the_end_appends_and_a_whole_list_can_be_replaced():
    data = _data()
    set_override(data, "train.losses[1]={loss: EmbedDistillLoss, kwargs: {projection_dim: 768}}")
    assert [t["loss"] for t in data["train"]["losses"]] == ["TeacherEmbeddingLoss", "EmbedDistillLoss"]
    set_override(data, "train.losses=[]")
    assert data["train"]["losses"] == []


@pytest.mark.parametrize(
    ("assignment", "key", "message"),
    [
        ("train.losses[3]=1", "train.losses[3]", "train.losses has 1 entries; index 3 is past its end"),
        ("train.losses[1].weight=1", "train.losses[1].weight", "index 1 is past its end"),
        ("train.loss[0]=x", "train.loss[0]", "train.loss is not a list"),
        ("train.losses[0][1]=2", "train.losses[0][1]", "train.losses[0] is not a list"),
        ("train..loss=1", "--set", "'' is not a key name"),
        ("train.loss.name=x", "train.loss.name", "cannot set a key inside train.loss, which is not a mapping"),
    ],
)
def test_a_bad_path_is_one_line_naming_it(assignment, key, message):
    data = _data()
    with pytest.raises(ConfigError) as info:
        set_override(data, assignment)
    assert info.value.key == key and message in info.value.message
    assert data == _data()  # nothing half-applied

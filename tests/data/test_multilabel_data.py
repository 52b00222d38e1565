"""Multi-label data (data.task=multilabel): label sets from lists or separated strings, and one
clear line for each bad input (issue 17, part 1)."""

from __future__ import annotations

import json

import pytest
import torch

from vdcnn_res.data import TextDataModule
from vdcnn_res.data.labels import label_set
from vdcnn_res.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def write_csv(path, rows, sep=","):
    path.write_text("text,labels\n" + "".join(f'"{t}",{sep.join(l) if isinstance(l, list) else l}\n' for t, l in rows))
    return str(path)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps({"text": t, **({} if l is _MISSING else {"labels": l})}) + "\n" for t, l in rows))
    return str(path)


_MISSING = object()
TRAIN = [("stocks up", '"Business"'), ("goal", '"Sports|World"'), ("rocket", '"Sci/Tech"'),
         ("nothing", '""'), ("summit", '"World"'), ("crash", '"Business|World"')]  # fmt: skip


def module(tmp_path, **kw):
    kw.setdefault("train", write_csv(tmp_path / "train.csv", TRAIN))
    kw.setdefault("valid_fraction", 0.0)
    kw.setdefault("task", "multilabel")
    return TextDataModule(label_column="labels", cache_dir=str(tmp_path / "cache"), batch_size=8, **kw)


def test_csv_label_sets_with_json_valid(tmp_path):
    valid = write_jsonl(tmp_path / "valid.jsonl", [("a", ["Sports"]), ("b", []), ("c", ["Sci/Tech", " Business "])])
    data = module(tmp_path, valid=valid)
    assert data.label_names == ["Business", "Sci/Tech", "Sports", "World"] and data.task == "multilabel"
    assert data.class_counts.tolist() == [2, 1, 1, 3] and data.num_train_texts == 6
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    rows = {int(i): labels.tolist() for i, labels in zip(batch["index"], batch["labels"])}
    assert batch["labels"].dtype == torch.int8
    assert rows == {0: [0, 0, 1, 0], 1: [0, 0, 0, 0], 2: [1, 1, 0, 0]}  # an empty set is a row of zeros


def test_classes_file_sets_the_order_and_numeric_names_sort_as_numbers(tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("World\nSports\nBusiness\nSci/Tech\nHealth\n")
    with pytest.warns(UserWarning, match="labels with no training text: Health"):
        assert module(tmp_path, classes_file=str(classes)).label_names == ["World", "Sports", "Business", "Sci/Tech", "Health"]
    train = write_csv(tmp_path / "n.csv", [("a", '"2|10"'), ("b", '"1"')])
    assert module(tmp_path, train=train).label_names == ["1", "2", "10"]


def test_custom_separator_and_valid_fraction(tmp_path):
    rows = [(f"t{i}", f'"{["A;B", "B", "A", ""][i % 4]}"') for i in range(40)]
    data = module(tmp_path, train=write_csv(tmp_path / "s.csv", rows), label_separator=";", valid_fraction=0.3)
    assert data.label_names == ["A", "B"]
    data.setup("fit")
    assert len(data._split("train")) + len(data._split("valid")) == 40 and len(data._split("valid")) == 12  # 3 of each set


def test_predict_split_needs_no_labels(tmp_path):
    data = module(tmp_path, predict=write_jsonl(tmp_path / "p.jsonl", [("x", _MISSING), ("y", _MISSING)]))
    data.setup("predict")
    batch = next(iter(data.predict_dataloader()))
    assert (batch["labels"] == -1).all() and batch["labels"].shape == (2, 4)


def test_label_set_parsing():
    assert label_set("A| B |C", "|") == ["A", "B", "C"]
    assert label_set(["x", 3], "|") == ["x", "3"] and label_set([], "|") == [] and label_set("  ", "|") == []
    assert label_set(None, "|") is None


# ---------------------------------------------------------------- one line per bad input


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_unknown_label_in_valid(tmp_path):
    valid = write_csv(tmp_path / "v.csv", [("a", '"Sports|Health"')])
    data = module(tmp_path, valid=valid)
    with pytest.raises(UserError) as err:
        data.setup("fit")
    assert "label 'Health' in the valid split never occurs in the training split" in one_line(err)


def test_empty_label_inside_a_set_names_the_row(tmp_path):
    train = write_csv(tmp_path / "e.csv", TRAIN + [("x", '"World||Sports"')])
    with pytest.raises(UserError) as err:
        module(tmp_path, train=train).label_names
    assert "an empty label in 'World||Sports'" in one_line(err) and "data row 7 of" in one_line(err)


def test_empty_string_in_a_json_list(tmp_path):
    train = write_jsonl(tmp_path / "e.jsonl", [("a", ["A"]), ("b", ["B", ""])])
    with pytest.raises(UserError, match=r"an empty label in .*data row 2 of") as err:
        module(tmp_path, train=train).label_names
    one_line(err)


def test_duplicate_label(tmp_path):
    train = write_csv(tmp_path / "d.csv", TRAIN + [("x", '"World|World"')])
    with pytest.raises(UserError) as err:
        module(tmp_path, train=train).label_names
    assert "label 'World' is listed twice" in one_line(err)


def test_wrong_separator_in_training_labels(tmp_path):
    train = write_csv(tmp_path / "w.csv", [("a", '"A"'), ("b", '"B"'), ("c", '"A,B"')])
    with pytest.raises(UserError) as err:
        module(tmp_path, train=train).label_names
    assert "set data.label_separator=','" in one_line(err)


def test_wrong_separator_in_valid_labels(tmp_path):
    valid = write_csv(tmp_path / "v.csv", [("a", '"World;Sports"')])
    with pytest.raises(UserError) as err:
        module(tmp_path, valid=valid).setup("fit")
    assert "joined by ';'" in one_line(err)


def test_list_labels_without_the_task_switch(tmp_path):
    train = write_jsonl(tmp_path / "l.jsonl", [("a", ["A"]), ("b", ["B"])])
    data = TextDataModule(train=train, label_column="labels", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(UserError) as err:
        data.label_names
    assert "set data.task=multilabel" in one_line(err)


def test_null_label_is_missing_and_dropped_rows_are_located(tmp_path):
    train = write_jsonl(tmp_path / "n.jsonl", [("a", ["A"]), ("b", None), ("c", ["B"]), ("d", ["A", "A"])])
    with pytest.raises(UserError, match="1 of 4 rows of the train split have no label"):
        module(tmp_path, train=train).label_names
    with pytest.warns(UserWarning, match="dropped"), pytest.raises(UserError, match="data row 4 of"):
        module(tmp_path, train=train, missing_labels="drop").label_names  # row 4 of the file, not of the kept rows


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"task": "multi"}, "data.task must be one of"),
        ({"label_separator": ""}, "data.label_separator must be a non-blank string"),
        ({"label_offset": 1}, "data.label_offset applies to single-label"),
        ({"sampling": "balanced"}, "data.sampling=balanced draws classes of single-label data"),
    ],
)
def test_bad_settings(tmp_path, settings, message):
    with pytest.raises(UserError, match=message):
        module(tmp_path, **settings)


def test_a_single_label_in_all_is_refused(tmp_path):
    with pytest.raises(UserError, match="needs at least two"):
        module(tmp_path, train=write_csv(tmp_path / "o.csv", [("a", '"A"'), ("b", '""')])).label_names


def test_a_list_of_classlabel_column_names_the_labels(tmp_path):
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "labels": datasets.List(datasets.ClassLabel(names=["c", "a", "b"]))})
    path = tmp_path / "hub.parquet"
    datasets.Dataset.from_dict({"text": ["x", "y", "z"], "labels": [[0, 2], [1], []]}, features=features).to_parquet(str(path))
    data = module(tmp_path, train=str(path))
    assert data.label_names == ["c", "a", "b"]  # the feature's order, not sorted
    data.setup("fit")
    assert data._split("train").labels.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]

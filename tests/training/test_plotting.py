import csv

import torch

from vdcnn_res.training import plotting
from vdcnn_res.training.plotting import plot_confusion_matrix, write_confusion_csv


def test_confusion_matrix_png(tmp_path):
    confusion = torch.tensor([[5, 1, 0], [0, 3, 2], [1, 0, 8]])
    path = plot_confusion_matrix(confusion, ["World", "Sports", "Sci/Tech"], tmp_path / "sub" / "cm.png")
    assert path.exists()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_confusion_matrix_with_an_empty_row(tmp_path):
    confusion = torch.zeros(2, 2, dtype=torch.long)
    confusion[0, 0] = 4
    assert plot_confusion_matrix(confusion, ["a", "b"], tmp_path / "cm.png").stat().st_size > 0


def test_labels_no_installed_font_can_draw_become_indices(tmp_path, monkeypatch, recwarn):
    monkeypatch.setattr(plotting, "_FONTS", ["DejaVu Sans"])  # as on a machine without CJK fonts
    assert not plotting._renderable(["体育"]) and plotting._renderable(["Sci/Tech"])
    plot_confusion_matrix(torch.tensor([[3, 1], [0, 4]]), ["体育", "财经"], tmp_path / "cm.png")
    assert not [w for w in recwarn if "missing from font" in str(w.message)]


def test_confusion_csv_keeps_the_label_names(tmp_path):
    path = write_confusion_csv(torch.tensor([[3, 1], [0, 4]]), ["体育", "财经"], tmp_path / "cm.csv")
    rows = list(csv.reader(path.open(encoding="utf-8")))
    assert rows == [["true \\ predicted", "体育", "财经"], ["体育", "3", "1"], ["财经", "0", "4"]]

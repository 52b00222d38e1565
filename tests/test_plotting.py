import torch

from vdcnn_res.plotting import plot_confusion_matrix


def test_confusion_matrix_png(tmp_path):
    confusion = torch.tensor([[5, 1, 0], [0, 3, 2], [1, 0, 8]])
    path = plot_confusion_matrix(confusion, ["World", "Sports", "Sci/Tech"], tmp_path / "sub" / "cm.png")
    assert path.exists()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_confusion_matrix_with_an_empty_row(tmp_path):
    confusion = torch.zeros(2, 2, dtype=torch.long)
    confusion[0, 0] = 4
    assert plot_confusion_matrix(confusion, ["a", "b"], tmp_path / "cm.png").stat().st_size > 0

"""The classifier head's options: head_norm before fc1 (docs/longdoc_plateau.md)."""

import pytest
import torch
from torch import nn

from vdcnn_res.errors import UserError
from vdcnn_res.model import HEAD_NORM_TYPES, ModelConfig, create_model, list_models

SMALL = dict(num_classes=5, channels=(8, 8, 16, 16), hidden_size=16, embedding_dim=8)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("head_norm", HEAD_NORM_TYPES)
def test_head_norm_variants_are_padding_invariant_and_train(name, head_norm):
    torch.manual_seed(0)
    model = create_model(name, head_norm=head_norm, **SMALL)
    expected = {"none": None, "batch": nn.BatchNorm1d, "layer": nn.LayerNorm}[head_norm]
    assert (type(model.head[0]) is expected) if expected else isinstance(model.head[0], nn.Linear)
    ids = torch.randint(2, 60, (4, 90))
    ids[1, 30:] = 0
    model.train()
    model(ids).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(torch.cat([ids, torch.zeros(4, 50, dtype=torch.long)], 1)), model(ids),
                                   atol=1e-5, rtol=1e-5)


def test_head_norm_is_validated_and_off_by_default():
    # "auto", the default: centred when a bag shares the logits (docs/longdoc_plateau.md §13); a
    # built model and a checkpoint hold the resolved value, so they never depend on the rule.
    assert ModelConfig(ngram_orders=(1, 2)).resolved().head_norm == "batch"
    assert ModelConfig(ngram_orders=(1, 2), head_norm="none").resolved().head_norm == "none"
    assert ModelConfig().head_norm == "auto" and ModelConfig().resolved().head_norm == "none"
    assert create_model("vdcnn9", ngram_orders=(1, 2), **SMALL).config.head_norm == "batch"
    assert ModelConfig.from_dict({"ngram_orders": [1, 2]}).resolved().head_norm == "none"  # files from before head_norm
    with pytest.raises(UserError, match="unknown head_norm 'group'"):
        ModelConfig(head_norm="group")


def _dead_fc1_share_after_adamw_steps(head_norm: str, steps: int = 15) -> float:
    """The mechanism of docs/longdoc_plateau.md on the head alone: k-max features of long texts
    are positive and nearly the same vector for every text; AdamW's sign-like first steps then
    move every fc1 pre-activation the same way, and units negative for every text die."""
    torch.manual_seed(0)
    model = create_model("vdcnn9", num_classes=18, head_norm=head_norm, hidden_size=256)  # 4096 features, as by default
    head = model.head
    common = 2.0 + torch.rand(model.num_features)  # shared positive part (the common mode)
    features = (common + 0.3 * torch.randn(32, model.num_features)).clamp(min=0.01)  # (B, 4096), > 0
    labels = torch.randint(0, 18, (32,))
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.05)
    head.train()
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(head(features), labels, label_smoothing=0.1).backward()
        optimizer.step()
    with torch.no_grad():
        pre = head[:2](features) if head_norm != "none" else head[0](features)  # fc1 pre-activations
        return float((pre <= 0).all(dim=0).float().mean())


def test_head_norm_batch_keeps_fc1_alive_on_common_mode_features():
    """Issue 20: without the norm most fc1 units die within 15 steps; with BatchNorm none do."""
    assert _dead_fc1_share_after_adamw_steps("none") > 0.5
    assert _dead_fc1_share_after_adamw_steps("batch") == 0.0


def test_onnx_export_with_head_norm(tmp_path):
    pytest.importorskip("onnxruntime")
    from vdcnn_res.inference.onnx import export_onnx

    torch.manual_seed(0)
    model = create_model("vdcnn9", head_norm="batch", **SMALL).eval()
    export_onnx(model, tmp_path / "model.onnx")  # verifies the graph against PyTorch on two shapes

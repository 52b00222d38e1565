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
    assert ModelConfig().head_norm == "none"
    with pytest.raises(UserError, match="unknown head_norm 'group'"):
        ModelConfig(head_norm="group")

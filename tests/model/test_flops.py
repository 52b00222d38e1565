"""Parameter and FLOP counting against hand counts."""

import itertools

import pytest
import torch

from vdcnn_res.model.config import DOWNSAMPLING_TYPES, ModelConfig
from vdcnn_res.model.flops import count_parameters, forward_flops, model_summary
from vdcnn_res.model import create_model

SMALL = dict(num_classes=5, channels=(8, 16, 16, 32), hidden_size=32, embedding_dim=8)


pytestmark = pytest.mark.usefixtures("one_thread")


def expected_basic_flops(c: ModelConfig, length: int) -> int:
    """2 FLOPs per multiply-add over convs and linears of a basic-block VDCNN, one text."""
    lengths = c.stage_lengths(length)
    flops = 2 * c.embedding_dim * c.channels[0] * 3 * lengths[0]  # stem
    cin = c.channels[0]
    for i, (ch, n, L) in enumerate(zip(c.channels, c.layout, lengths)):
        for j in range(n):
            flops += 2 * (cin if j == 0 else ch) * ch * 3 * L + 2 * ch * ch * 3 * L
        strided = i > 0 and c.downsampling == "conv"
        if c.shortcut and (cin != ch or strided):
            flops += 2 * cin * ch * L  # 1x1 projection, counted at its output length
        cin = ch
    h = c.hidden_size
    return flops + 2 * (c.num_features * h + h * h + h * c.num_classes)


@pytest.mark.parametrize("name", ["vdcnn9", "vdcnn29"])
@pytest.mark.parametrize("downsampling,shortcut", list(itertools.product(DOWNSAMPLING_TYPES, (True, False))))
@pytest.mark.parametrize("length", [100, 257])
def test_forward_flops_matches_hand_count(name, downsampling, shortcut, length):
    model = create_model(name, downsampling=downsampling, shortcut=shortcut, **SMALL)
    assert forward_flops(model, length) == expected_basic_flops(model.config, length)


def test_forward_flops_default_depth9():
    model = create_model("vdcnn9", num_classes=4)
    flops = forward_flops(model, 1024)
    assert flops == expected_basic_flops(model.config, 1024)
    assert 0.5e9 < flops < 0.8e9  # the paper-size network is ~0.6 GFLOP at 1024 characters


@pytest.mark.parametrize("block", ["basic", "preact", "bottleneck"])
def test_forward_flops_scale_with_batch_and_floor_at_min_length(block):
    model = create_model("vdcnn17", block=block, **SMALL)
    one = forward_flops(model, 200)
    assert forward_flops(model, 200, batch_size=3) == 3 * one
    assert forward_flops(model, 10) == forward_flops(model, model.min_length)
    assert forward_flops(model, 400) > one


def test_bottleneck_is_cheaper_than_basic():
    basic = create_model("vdcnn29", num_classes=4)
    bottleneck = create_model("vdcnn29", num_classes=4, block="bottleneck")
    assert count_parameters(bottleneck) < count_parameters(basic)
    assert forward_flops(bottleneck, 256) < forward_flops(basic, 256)


def test_forward_flops_restores_training_mode_and_leaves_bn_stats_alone():
    model = create_model("vdcnn9", **SMALL).train()
    bn = model.stages[0].blocks[0].bn1
    before = bn.running_mean.clone()
    forward_flops(model, 128)
    assert model.training
    assert torch.equal(bn.running_mean, before)
    model.eval()
    forward_flops(model, 128)
    assert not model.training


def test_forward_flops_rejects_bad_sizes():
    model = create_model("vdcnn9", **SMALL)
    with pytest.raises(ValueError, match="must be >= 1"):
        forward_flops(model, 0)


def test_count_parameters():
    model = create_model("vdcnn9", **SMALL)
    total = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == total
    model.embedding.weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == total - model.embedding.weight.numel()


def test_model_summary():
    model = create_model("vdcnn17", **SMALL)
    s = model_summary(model, 300)
    assert s["params"] == count_parameters(model)
    assert s["length"] == 300
    assert s["forward_flops_per_sample"] == forward_flops(model, 300)
    assert s["forward_gflops_per_sample"] == pytest.approx(s["forward_flops_per_sample"] / 1e9)

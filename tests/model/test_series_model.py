"""The series stem (input_channels > 0), the head options (kmax_mlp | global_avg, hidden_size 0),
block kernel sizes and downsampling none: shapes, gradients, padding invariance, checks."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vdcnn_res.errors import UserError
from vdcnn_res.model import HEAD_TYPES, ModelConfig, build_model, forward_flops
from vdcnn_res.model.blocks import EvenSameConv1d
from vdcnn_res.model.config import DOWNSAMPLING_TYPES

pytestmark = pytest.mark.usefixtures("one_thread")

# Every head x downsampling x hidden layers on/off, for series (C = 3) and for text (C = 0).
VARIANTS = list(itertools.product(HEAD_TYPES, DOWNSAMPLING_TYPES, (0, 16), (0, 3)))


def tiny(head: str, downsampling: str, hidden: int, channels: int, **kw) -> nn.Module:
    kernels = (3, 3) if downsampling == "conv" else (8, 5, 3)  # even kernels cannot stride
    config = ModelConfig(
        num_classes=4, input_channels=channels, blocks_per_stage=(1, 1, 1), channels=(8, 16, 16),
        kernel_sizes=kernels, downsampling=downsampling, head=head, hidden_size=hidden, kmax=2, **kw,
    )  # fmt: skip
    model = build_model(config)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # non-trivial eval statistics, so padding leaks would show
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def inputs(model: nn.Module, lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c = model.config.input_channels
    if c:
        return [torch.randn(c, n, generator=g) for n in lengths]
    return [torch.randint(1, model.config.vocab_size, (n,), generator=g) for n in lengths]


def padded(items: list[torch.Tensor], width: int, fill: float = 0.0) -> torch.Tensor:
    return torch.stack([F.pad(x, (0, width - x.shape[-1]), value=fill) for x in items])


@pytest.mark.parametrize("head,downsampling,hidden,channels", VARIANTS)
def test_every_variant_trains_and_is_padding_invariant(head, downsampling, hidden, channels):
    torch.manual_seed(0)
    model = tiny(head, downsampling, hidden, channels)
    lengths = [37, 5, 1, 19]
    items = inputs(model, lengths)
    lengths_t = torch.tensor(lengths)
    # Training: shapes and a gradient for every parameter.
    model.train()
    logits = model(padded(items, 40), lengths_t)
    assert logits.shape == (4, 4)
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # Eval: a series' logits do not depend on the batch's padding, nor on the padding's values.
    model.eval()
    with torch.no_grad():
        alone = torch.cat([model(x[None], torch.tensor([x.shape[-1]])) for x in items])
        wide = model(padded(items, 64), lengths_t)
        torch.testing.assert_close(wide, alone, rtol=1e-4, atol=1e-5)
        if channels:  # whatever the caller padded with is masked
            torch.testing.assert_close(model(padded(items, 64, fill=7.0), lengths_t), alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("head,downsampling,hidden,channels", VARIANTS)
def test_training_mode_ignores_the_batch_mates_padding(head, downsampling, hidden, channels):
    """A short and a long input: the same training-mode logits however far the batch is padded,
    and evaluation (running statistics of valid positions) agrees with itself alone."""
    torch.manual_seed(0)
    model = tiny(head, downsampling, hidden, channels).train()
    items = inputs(model, [9, 40])
    lengths = torch.tensor([9, 40])
    tight = model(padded(items, 40), lengths)
    torch.testing.assert_close(model(padded(items, 90, fill=3.0), lengths), tight, rtol=1e-4, atol=1e-5)
    model.eval()
    with torch.no_grad():
        alone = torch.cat([model(x[None], torch.tensor([x.shape[-1]])) for x in items])
        torch.testing.assert_close(model(padded(items, 90), lengths), alone, rtol=1e-4, atol=1e-5)


def test_published_resnet_layout_module_names_and_sizes():
    config = ModelConfig(
        num_classes=3, input_channels=2, blocks_per_stage=(1, 1, 1), channels=(64, 128, 128),
        kernel_sizes=(8, 5, 3), downsampling="none", head="global_avg", hidden_size=0,
    )  # fmt: skip
    model = build_model(config)
    block = model.stages[1].blocks[0]
    assert [block.conv1.kernel_size[0], block.conv2.kernel_size[0], block.conv3.kernel_size[0]] == [8, 5, 3]
    assert isinstance(block.conv1, EvenSameConv1d) and block.shortcut is not None  # 64 -> 128: a projection
    assert model.embedding is None and model.stem.in_channels == 2
    assert [name for name, _ in model.head.named_children()] == ["fc"] and model.head.fc.in_features == 128
    assert config.min_length == 1 and config.stage_lengths(10) == [10, 10, 10]
    assert model(torch.randn(2, 2, 1)).shape == (2, 3)  # a one-value series
    assert forward_flops(model, 100) > 0


@pytest.mark.parametrize("kernel", [2, 4, 8])
def test_even_kernels_match_torch_same_padding(kernel):
    conv = EvenSameConv1d(2, 3, kernel)
    x = torch.randn(2, 2, 11)
    with warnings.catch_warnings():  # torch warns (once) about its own even 'same' padding
        warnings.simplefilter("ignore")
        expected = F.conv1d(x, conv.weight, padding="same")
    torch.testing.assert_close(conv(x), expected)


def test_text_model_is_unchanged_by_default():
    model = build_model(ModelConfig(num_classes=4))
    names = [n for n, _ in model.named_parameters()]
    assert names[0] == "embedding.weight" and "stages.0.blocks.0.conv1.weight" in names
    assert not any("conv3" in n for n in names)
    assert [n for n, _ in model.head.named_children()] == ["fc1", "act1", "drop1", "fc2", "act2", "drop2", "fc"]


def test_series_input_is_checked():
    model = tiny("global_avg", "none", 0, 3).eval()
    with pytest.raises(ValueError, match=r"float values \(batch, 3, length\)"):
        model(torch.randn(2, 2, 10))
    with pytest.raises(ValueError, match="float values"):
        model(torch.ones(2, 3, 10, dtype=torch.long))
    lengths = model._prepare(torch.randn(2, 3, 10), None)[1]
    assert lengths.tolist() == [10, 10]  # without lengths every position counts


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"input_channels": -1}, "input_channels must be an int >= 0"),
        ({"input_channels": 2, "ngram_orders": (1, 2)}, "cannot use them"),
        ({"kernel_sizes": (8, 5, 3), "block": "preact"}, "needs block=basic"),
        ({"kernel_sizes": (8, 3), "downsampling": "conv"}, "needs an odd kernel"),
        ({"head": "avg"}, "unknown head"),
        ({"kernel_sizes": ()}, "kernel_sizes must have at least one"),
    ],
)
def test_bad_series_and_head_settings_are_user_errors(kwargs, words):
    with pytest.raises(UserError, match=words):
        ModelConfig(**kwargs)


def test_series_config_ignores_the_vocabulary_and_round_trips():
    config = ModelConfig(input_channels=6, vocab_size=0, head="global_avg", hidden_size=0, kernel_sizes=(8, 5, 3))
    again = ModelConfig.from_dict(__import__("dataclasses").asdict(config))
    assert again == config

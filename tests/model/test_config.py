"""ModelConfig: defaults, variants table, validation messages, JSON round-trip."""

import dataclasses
import json

import pytest

from vdcnn_res.model.config import VARIANTS, ModelConfig


def test_defaults_are_the_papers_depth9():
    c = ModelConfig()
    assert c.layout == (1, 1, 1, 1)
    assert c.channels == (64, 128, 256, 512)
    assert (c.block, c.shortcut, c.downsampling, c.kmax) == ("basic", True, "maxpool", 8)
    assert c.min_length == 64
    assert c.num_features == 4096


@pytest.mark.parametrize("depth", sorted(VARIANTS))
def test_variant_depth_counts_convs(depth):
    # Two k=3 convs per block plus the stem conv (Table 2 of the paper).
    layout = ModelConfig(depth=depth).layout
    assert 2 * sum(layout) + 1 == depth
    assert ModelConfig(depth=depth).conv_layers == depth


@pytest.mark.parametrize("block, kernels", [("basic", (3, 3)), ("basic", (8, 5, 3)), ("preact", (3, 3)), ("bottleneck", (3, 3))])
def test_conv_layers_count_the_built_networks_convolutions(block, kernels):
    """`conv_layers` is the stem plus every block's branch convolutions (shortcut projections excluded)."""
    import torch.nn as nn

    from vdcnn_res.model import build_model

    config = ModelConfig(block=block, kernel_sizes=kernels, blocks_per_stage=(2, 1, 1, 1), channels=(8, 8, 16, 16),
                         num_classes=3, vocab_size=20, embedding_dim=4, hidden_size=8)  # fmt: skip
    model = build_model(config)
    main_path = [n for n, m in model.named_modules() if isinstance(m, nn.Conv1d) and "shortcut" not in n and "downsample" not in n]
    assert config.conv_layers == len(main_path) == 1 + config.convs_per_block * 5


def test_variants_table_is_the_paper():
    assert VARIANTS == {9: (1, 1, 1, 1), 17: (2, 2, 2, 2), 29: (5, 5, 2, 2), 49: (8, 8, 5, 3)}


def test_custom_layout_overrides_depth():
    c = ModelConfig(depth=49, blocks_per_stage=[3, 1], channels=[16, 32])
    assert c.layout == (3, 1)
    assert c.channels == (16, 32)
    assert isinstance(c.blocks_per_stage, tuple) and isinstance(c.channels, tuple)
    assert c.min_length == 8 * 2


@pytest.mark.parametrize("kmax,channels,expected", [(8, (1, 1, 1, 1), 64), (4, (2, 2, 2), 16), (3, (5,), 3)])
def test_min_length(kmax, channels, expected):
    c = ModelConfig(kmax=kmax, channels=channels, blocks_per_stage=(1,) * len(channels))
    assert c.min_length == expected


@pytest.mark.parametrize(
    "length,expected",
    [
        (1024, [1024, 512, 256, 128]),
        (1001, [1001, 501, 251, 126]),
        (65, [65, 33, 17, 9]),
        (10, [64, 32, 16, 8]),  # shorter than min_length = 64
    ],
)
def test_stage_lengths_round_up(length, expected):
    assert ModelConfig().stage_lengths(length) == expected


def test_roundtrip_asdict_and_json():
    c = ModelConfig(
        num_classes=7,
        blocks_per_stage=(2, 1, 3),
        channels=(8, 16, 32),
        block="bottleneck",
        downsampling="kmax",
        dropout=0.1,
        zero_init_residual=True,
    )
    assert ModelConfig(**dataclasses.asdict(c)) == c
    # JSON turns tuples into lists; __post_init__ turns them back.
    assert ModelConfig(**json.loads(json.dumps(dataclasses.asdict(c)))) == c
    d = ModelConfig()
    assert ModelConfig(**json.loads(json.dumps(dataclasses.asdict(d)))) == d


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"depth": 11}, r"unknown depth 11; valid choices: \[9, 17, 29, 49\]"),
        ({"depth": 18}, r"valid choices: \[9, 17, 29, 49\]"),
        ({"blocks_per_stage": ()}, "at least one stage"),
        ({"blocks_per_stage": (1, 0, 1, 1)}, "positive ints"),
        ({"blocks_per_stage": (1, -2, 1, 1)}, "positive ints"),
        ({"blocks_per_stage": (1, 1.5, 1, 1)}, "positive ints"),
        ({"blocks_per_stage": (1, True, 1, 1)}, "positive ints"),
        ({"blocks_per_stage": "1111"}, "sequence of positive ints"),
        ({"blocks_per_stage": (1, 1, 1)}, "one entry per stage"),
        ({"channels": (64, 128)}, "one entry per stage"),
        ({"channels": ()}, "at least one stage"),
        ({"channels": (64, 0, 256, 512)}, "positive ints"),
        ({"block": "dense"}, r"unknown block 'dense'; valid choices: \['basic', 'preact', 'bottleneck'\]"),
        ({"downsampling": "avg"}, r"valid choices: \['conv', 'maxpool', 'kmax', 'none'\]"),
        ({"num_classes": 1}, "num_classes must be >= 2"),
        ({"vocab_size": 5, "padding_idx": 5}, "vocab_size > padding_idx >= 0"),
        ({"padding_idx": -1}, "vocab_size > padding_idx >= 0"),
        ({"kmax": 0}, "kmax must be >= 1"),
        ({"hidden_size": -1}, "hidden_size must be >= 0"),
        ({"embedding_dim": 0}, "embedding_dim must be an int >= 1 or .auto."),
        ({"embedding_dim": "wide"}, "embedding_dim must be an int >= 1 or .auto."),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"dropout": -0.1}, r"dropout must be in \[0, 1\)"),
        ({"input_dropout": 1.0}, r"input_dropout must be in \[0, 1\)"),
        ({"input_dropout": -0.1}, r"input_dropout must be in \[0, 1\)"),
        ({"zero_init_residual": True, "shortcut": False}, "zero_init_residual=True needs shortcut=True"),
    ],
)
def test_invalid_configs_raise_clear_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)


def test_unknown_depth_is_fine_with_a_custom_layout():
    # depth is only a key into VARIANTS; a custom layout makes it irrelevant.
    assert ModelConfig(depth=11, blocks_per_stage=(1, 1, 1, 1)).layout == (1, 1, 1, 1)


def test_masked_norm_is_the_default_and_files_without_it_load_plain_batchnorm():
    from dataclasses import asdict

    assert ModelConfig().masked_norm is True
    old = asdict(ModelConfig())
    del old["masked_norm"]  # a checkpoint or config.json written before the field existed
    assert ModelConfig.from_dict(old).masked_norm is False  # what that model was trained with
    assert ModelConfig.from_dict(asdict(ModelConfig())).masked_norm is True


@pytest.mark.parametrize(
    "vocab_size, input_channels, width",
    [(72, 0, 16), (256, 0, 16), (257, 0, 64), (4459, 0, 64), (72, 3, 16)],
)
def test_auto_embedding_dim_follows_the_vocabulary(vocab_size, input_channels, width):
    """The paper's 16 for an alphabet (bytes included), 64 for a larger learned vocabulary."""
    config = ModelConfig(vocab_size=vocab_size, input_channels=input_channels)
    assert config.embedding_dim == "auto" and config.resolved().embedding_dim == width
    assert ModelConfig(vocab_size=vocab_size, embedding_dim=32).resolved().embedding_dim == 32  # given: kept


def test_files_without_embedding_dim_load_the_papers_width():
    old = dataclasses.asdict(ModelConfig(vocab_size=4459).resolved())
    assert old["embedding_dim"] == 64  # checkpoints hold the concrete width
    assert ModelConfig.from_dict(old).embedding_dim == 64
    del old["embedding_dim"]  # a file written without the field
    assert ModelConfig.from_dict(old).embedding_dim == 16
    assert ModelConfig.from_dict({**old, "embedding_dim": "auto"}).resolved().embedding_dim == 64

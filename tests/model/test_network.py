"""VDCNN network: every registered variant x shortcut x downsampling x block type.

Small widths keep the big loops fast; default widths appear only where a test is about
the defaults (parameter counts, head size).
"""

import ast
import copy
import itertools
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from vdcnn_res.model.config import BLOCK_TYPES, DOWNSAMPLING_TYPES, VARIANTS, ModelConfig
from vdcnn_res.model import (
    BasicConvResBlock,
    BottleneckConvResBlock,
    PreActConvResBlock,
    VDCNN,
    build_model,
    create_model,
    list_models,
)

NAMES = list_models()
SMALL = dict(num_classes=7, channels=(8, 16, 16, 32), hidden_size=32, embedding_dim=8)
BLOCK_CLASSES = (BasicConvResBlock, PreActConvResBlock, BottleneckConvResBlock)
EVERY = list(itertools.product(NAMES, (True, False), DOWNSAMPLING_TYPES, BLOCK_TYPES))
NAME_DS_BLOCK = list(itertools.product(NAMES, DOWNSAMPLING_TYPES, BLOCK_TYPES))


pytestmark = pytest.mark.usefixtures("one_thread")


def is_projection(block: nn.Module) -> bool:
    return isinstance(block.shortcut, nn.Sequential)


def small(name: str, **overrides) -> VDCNN:
    return create_model(name, **{**SMALL, **overrides})


def blocks_of(model: VDCNN) -> list[list[nn.Module]]:
    return [list(stage.blocks) for stage in model.stages]


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN affine + running stats, so eval-mode BN maps 0 to non-zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 2 - 1)


def random_texts(lengths, vocab_size=72, seed=0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab_size, (n,), generator=g) for n in lengths]


def pad_batch(texts, length: int, padding_idx: int = 0) -> torch.Tensor:
    ids = torch.full((len(texts), length), padding_idx, dtype=torch.long)
    for i, t in enumerate(texts):
        ids[i, : len(t)] = t
    return ids


def b_in(block: nn.Module) -> int:
    return block.conv1.in_channels if not isinstance(block, PreActConvResBlock) else block.bn1.num_features


def b_out(block: nn.Module) -> int:
    last = block.conv3 if isinstance(block, BottleneckConvResBlock) else block.conv2
    return last.out_channels


def projection_params(config: ModelConfig) -> int:
    """Parameters of the projection shortcuts the paper's rule calls for (1x1 conv + BN)."""
    total, cin = 0, config.channels[0]
    for i, c in enumerate(config.channels):
        stride = 2 if i > 0 and config.downsampling == "conv" else 1
        if cin != c or stride != 1:
            total += cin * c + 2 * c
        cin = c
    return total


def expected_basic_params(config: ModelConfig) -> int:
    """Hand count of a basic-block VDCNN: embedding, stem, blocks, projections, head."""
    c0, e = config.channels[0], config.embedding_dim
    total = config.vocab_size * e + e * c0 * 3 + c0
    cin = c0
    for c, n in zip(config.channels, config.layout):
        for j in range(n):
            total += (cin if j == 0 else c) * c * 3 + 2 * c + c * c * 3 + 2 * c
        cin = c
    if config.shortcut:
        total += projection_params(config)
    h = config.hidden_size
    total += config.num_features * h + h + h * h + h + h * config.num_classes + config.num_classes
    return total


# --------------------------------------------------------------------------- registry


def test_list_models_is_one_name_per_variant():
    assert NAMES == [f"vdcnn{d}" for d in sorted(VARIANTS)]
    assert NAMES == ["vdcnn9", "vdcnn17", "vdcnn29", "vdcnn49"]


@pytest.mark.parametrize("name", NAMES)
def test_create_model_uses_the_variant_layout(name):
    model = small(name)
    depth = int(name.removeprefix("vdcnn"))
    assert model.config.depth == depth
    assert [len(s) for s in blocks_of(model)] == list(VARIANTS[depth])


def test_create_model_overrides_apply():
    model = create_model(
        "vdcnn17",
        num_classes=7,
        vocab_size=30,
        padding_idx=3,
        embedding_dim=4,
        channels=[8, 16, 16, 32],
        block="preact",
        shortcut=False,
        downsampling="kmax",
        kmax=4,
        hidden_size=24,
        dropout=0.25,
    )
    c = model.config
    assert (c.num_classes, c.vocab_size, c.padding_idx, c.kmax, c.hidden_size) == (7, 30, 3, 4, 24)
    assert c.channels == (8, 16, 16, 32) and c.layout == (2, 2, 2, 2)
    assert model.embedding.weight.shape == (30, 4) and model.embedding.padding_idx == 3
    assert (model.embedding.weight[3] == 0).all()
    assert model.head.fc1.in_features == 32 * 4 and model.head.fc1.out_features == 24
    assert model.head.fc.out_features == 7
    assert [m.p for m in model.head if isinstance(m, nn.Dropout)] == [0.25, 0.25]
    assert model.min_length == 4 * 2**3
    assert all(isinstance(b, PreActConvResBlock) for s in blocks_of(model) for b in s)
    assert not [n for n, _ in model.named_parameters() if "shortcut" in n]
    assert all(b.shortcut is None for s in blocks_of(model) for b in s)
    assert isinstance(model.stages[1].downsample, nn.Module)
    out = model(torch.randint(4, 30, (2, 50)))
    assert out.shape == (2, 7)


def test_build_model_is_the_one_builder():
    config = ModelConfig(num_classes=3, blocks_per_stage=(1, 2), channels=(8, 16), hidden_size=16)
    model = build_model(config)
    assert isinstance(model, VDCNN) and model.config == config.resolved()  # "auto" made concrete
    resolved = config.resolved()
    assert build_model(resolved).config is resolved  # nothing to resolve: the same config
    assert [len(s) for s in blocks_of(model)] == [1, 2]
    assert model(torch.randint(1, 72, (2, 40))).shape == (2, 3)
    with pytest.raises(TypeError, match="ModelConfig"):
        build_model({"num_classes": 3})  # type: ignore[arg-type]


def test_unknown_model_name_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown model 'vdcnn11'; valid choices: \['vdcnn9', 'vdcnn17'"):
        create_model("vdcnn11")
    with pytest.raises(ValueError, match="valid choices"):
        create_model("resnet50")


def test_create_model_rejects_depth_and_unknown_fields_and_bad_values():
    with pytest.raises(ValueError, match="depth is set by the model name"):
        create_model("vdcnn9", depth=17)
    with pytest.raises(TypeError, match=r"unknown ModelConfig field\(s\) \['widths'\]"):
        create_model("vdcnn9", widths=(8, 16))
    with pytest.raises(ValueError, match="one entry per stage"):
        create_model("vdcnn9", channels=(8, 16))  # 2 widths for 4 stages
    with pytest.raises(ValueError, match="zero_init_residual=True needs shortcut=True"):
        create_model("vdcnn9", shortcut=False, zero_init_residual=True)


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize("name,shortcut,downsampling,block", EVERY)
def test_forward_shape_and_every_parameter_gets_a_gradient(name, shortcut, downsampling, block):
    torch.manual_seed(0)
    model = small(name, shortcut=shortcut, downsampling=downsampling, block=block).train()
    ids = pad_batch(random_texts([150, 37, 90]), 150)  # one text shorter than min_length
    logits = model(ids)
    assert logits.shape == (3, 7) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, torch.tensor([0, 3, 6])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"


@pytest.mark.parametrize("name,downsampling", list(itertools.product(NAMES, DOWNSAMPLING_TYPES)))
@pytest.mark.parametrize("shortcut", [True, False])
def test_parameter_count_default_widths(name, downsampling, shortcut):
    model = create_model(name, num_classes=4, downsampling=downsampling, shortcut=shortcut)
    n = sum(p.numel() for p in model.parameters())
    assert n == expected_basic_params(model.config)
    if not shortcut:
        on = create_model(name, num_classes=4, downsampling=downsampling, shortcut=True)
        assert n == sum(p.numel() for p in on.parameters()) - projection_params(on.config)


@pytest.mark.parametrize("name,downsampling,block", NAME_DS_BLOCK)
def test_shortcut_off_removes_exactly_the_projections(name, downsampling, block):
    on = small(name, downsampling=downsampling, block=block, shortcut=True)
    off = small(name, downsampling=downsampling, block=block, shortcut=False)
    assert not [n for n, _ in off.named_parameters() if "shortcut" in n]
    proj_on = sum(p.numel() for n, p in on.named_parameters() if "shortcut" in n)
    assert proj_on == projection_params(on.config) > 0
    n_on = sum(p.numel() for p in on.parameters())
    n_off = sum(p.numel() for p in off.parameters())
    assert n_off == n_on - proj_on
    for stage in off.stages:
        for b in stage.blocks:
            assert b.shortcut is None


@pytest.mark.parametrize("name,downsampling,block", NAME_DS_BLOCK)
def test_strides_and_projection_placement(name, downsampling, block):
    model = small(name, downsampling=downsampling, block=block)
    for i, stage in enumerate(blocks_of(model)):
        for j, b in enumerate(stage):
            halving = i > 0 and j == 0 and downsampling == "conv"
            strided = [m.stride[0] for m in b.modules() if isinstance(m, nn.Conv1d) and m.stride[0] != 1]
            # Only one conv per block may stride; the known defect strides twice.
            assert strided == ([2, 2] if halving else []), (i, j, strided)  # main conv + projection
            if block == "bottleneck":
                assert b.conv1.stride == (1,) and b.conv3.stride == (1,)
                assert b.conv2.stride == ((2,) if halving else (1,))
            else:
                assert b.conv2.stride == (1,)
                assert b.conv1.stride == ((2,) if halving else (1,))
            # The stage builder hands a projection to the first block of a stage only.
            needs_projection = j == 0 and (halving or b_in(b) != b_out(b))
            assert is_projection(b) == needs_projection, (i, j)
            assert isinstance(b.shortcut, nn.Identity) == (not needs_projection), (i, j)
            if needs_projection:
                assert b.shortcut[0].kernel_size == (1,)
                assert b.shortcut[0].stride == ((2,) if halving else (1,))
        has_pool = i > 0 and downsampling not in ("conv", "none")
        assert (model.stages[i].downsample is not None) == has_pool


def test_equal_widths_use_identity_shortcuts_with_pooling():
    pooled = create_model("vdcnn9", channels=(8, 8, 8, 8), hidden_size=16, downsampling="maxpool")
    assert all(isinstance(b.shortcut, nn.Identity) for s in blocks_of(pooled) for b in s)
    strided = create_model("vdcnn9", channels=(8, 8, 8, 8), hidden_size=16, downsampling="conv")
    assert [is_projection(s[0]) for s in blocks_of(strided)] == [False, True, True, True]


def test_default_model_matches_the_paper_head():
    model = create_model("vdcnn9")
    assert model.stem.out_channels == 64 and model.embedding.embedding_dim == 16
    assert [s[0].conv1.out_channels for s in blocks_of(model)] == [64, 128, 256, 512]
    assert model.head.fc1.in_features == 512 * 8 == model.num_features
    assert (model.head.fc1.out_features, model.head.fc2.out_features) == (2048, 2048)
    assert isinstance(model.head[-1], nn.Linear)  # logits out, no softmax
    assert model.min_length == 64
    assert model.final_norm is None
    assert isinstance(create_model("vdcnn9", block="preact").final_norm, nn.BatchNorm1d)


def test_he_init_and_zero_padding_embedding():
    model = create_model("vdcnn17")
    assert (model.embedding.weight[0] == 0).all()
    w = model.stages[1].blocks[1].conv1.weight  # 128 -> 128, k=3: fan_out = 384
    assert math.isclose(w.std().item(), math.sqrt(2 / 384), rel_tol=0.05)
    fc = model.head.fc1.weight  # fan_in = 4096
    assert math.isclose(fc.std().item(), math.sqrt(2 / 4096), rel_tol=0.05)
    assert (model.head.fc1.bias == 0).all()


# --------------------------------------------------------------------------- lengths


@pytest.mark.parametrize("downsampling,block", list(itertools.product(DOWNSAMPLING_TYPES, BLOCK_TYPES)))
def test_valid_length_after_every_stage(downsampling, block):
    torch.manual_seed(0)
    model = small("vdcnn17", downsampling=downsampling, block=block)
    randomize_batchnorm(model)
    model.eval()
    outputs: list[torch.Tensor] = []
    hooks = [s.register_forward_hook(lambda m, i, o: outputs.append(o[0])) for s in model.stages]
    lengths = [257, 64, 100, 5]
    texts = random_texts(lengths)
    with torch.no_grad():
        alone = []
        for t in texts:
            outputs.clear()
            model(t[None])
            alone.append(list(outputs))
        outputs.clear()
        model(pad_batch(texts, 1000))
    for h in hooks:
        h.remove()
    expected_batch_len = [1000] * 4 if downsampling == "none" else [1000, 500, 250, 125]
    for b, n in enumerate(lengths):
        valid = model.stage_lengths(n)
        assert valid == ModelConfig(downsampling=downsampling).stage_lengths(n)
        for i, v in enumerate(valid):
            assert alone[b][i].shape[-1] == v  # a lone text's tensor is exactly its valid part
            assert outputs[i].shape[-1] == expected_batch_len[i]
            torch.testing.assert_close(outputs[i][b, :, :v], alone[b][i][0], rtol=1e-4, atol=1e-4)
            assert (outputs[i][b, :, v:] == 0).all(), f"stage {i} leaks past the valid length"


def test_stage_lengths_helper():
    model = small("vdcnn9")
    assert model.stage_lengths(1024) == [1024, 512, 256, 128]
    assert model.stage_lengths(129) == [129, 65, 33, 17]
    assert model.stage_lengths(3) == [64, 32, 16, 8]
    three = create_model("vdcnn9", blocks_per_stage=(1, 1, 1), channels=(8, 8, 8), kmax=2, hidden_size=8)
    assert three.min_length == 8 and three.stage_lengths(9) == [9, 5, 3]


@pytest.mark.parametrize("length", [1, 7, 63, 64, 65])
def test_inputs_shorter_than_min_length(length):
    model = small("vdcnn29")
    randomize_batchnorm(model)
    model.eval()
    text = random_texts([length])[0]
    n = max(length, model.min_length)
    with torch.no_grad():
        out = model(text[None])
        padded = model(pad_batch([text], n))
        # Padding inside min_length is real (zero-embedding) content, not masked away.
        as_content = model(pad_batch([text], n), torch.tensor([n]))
    assert out.shape == (1, 7) and torch.isfinite(out).all()
    torch.testing.assert_close(out, padded)
    torch.testing.assert_close(out, as_content)


def test_lengths_are_derived_from_padding_and_validated():
    model = small("vdcnn9").eval()
    texts = random_texts([80, 120])
    ids = pad_batch(texts, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), model(ids, torch.tensor([80, 120])))
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 128\]"):
        model(ids, torch.tensor([80, 129]))
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\)"):
        model(ids, torch.tensor([80]))
    with pytest.raises(ValueError, match=r"input_ids must be \(batch, length\)"):
        model(ids[0])


def test_explicit_lengths_ignore_tokens_past_the_end():
    model = small("vdcnn9").eval()
    randomize_batchnorm(model)
    text = random_texts([100])[0]
    garbage = torch.cat([text, torch.randint(1, 72, (50,))])[None]
    with torch.no_grad():
        torch.testing.assert_close(model(garbage, torch.tensor([100])), model(text[None]))


# --------------------------------------------------------------------------- invariance


def assert_logits_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # Not bit-exact: batch size and length change how the conv kernels block their fp32
    # sums, and deep plain nets with random BN amplify that to ~1e-5 of the logit scale.
    # A missing mask changes logits by O(scale).
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=0, atol=5e-5 * scale)


@pytest.mark.parametrize("name,shortcut,downsampling,block", EVERY)
def test_training_mode_ignores_the_batch_mates_padding(name, shortcut, downsampling, block):
    """Masked BatchNorm: a batch of one short and one long text gives the same training-mode
    logits however far the batch is padded (statistics over valid positions only). In float64:
    train-mode BN in a deep plain stack amplifies fp32 rounding (sums of other lengths) past any
    useful tolerance, while a leak stays a leak."""
    torch.manual_seed(0)
    model = small(name, shortcut=shortcut, downsampling=downsampling, block=block).train().double()
    texts = random_texts([70, 300])
    tight, wide = (model(pad_batch(texts, n)) for n in (300, 500))
    torch.testing.assert_close(wide, tight, rtol=0, atol=1e-6 * tight.abs().max().item())


def test_unmasked_batchnorm_depends_on_padding_in_training():
    """The old behaviour, kept behind masked_norm=False: what the test above guards against."""
    torch.manual_seed(0)
    model = small("vdcnn9", masked_norm=False).train().double()
    texts = random_texts([70, 300])
    tight, wide = (model(pad_batch(texts, n)) for n in (300, 500))
    assert (wide - tight).abs().max() > 0.01 * tight.abs().max()


@pytest.mark.parametrize("name,shortcut,downsampling,block", EVERY)
def test_padding_invariance(name, shortcut, downsampling, block):
    torch.manual_seed(0)
    model = small(name, shortcut=shortcut, downsampling=downsampling, block=block)
    randomize_batchnorm(model)  # eval BN must map 0 to non-zero, or missing masks go unseen
    model.eval()
    lengths = [20, 64, 151, 299]  # 20 < min_length = 64
    texts = random_texts(lengths)
    with torch.no_grad():
        own = torch.cat([model(t[None]) for t in texts])
        for padded_to in (300, 1024):
            assert_logits_close(model(pad_batch(texts, padded_to)), own)
        reordered = model(pad_batch(texts[::-1], 512))  # position in the batch is irrelevant too
        assert_logits_close(reordered.flip(0), own)


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("block", BLOCK_TYPES)
def test_zero_init_residual_makes_blocks_identity(block):
    torch.manual_seed(0)
    ids = pad_batch(random_texts([200, 90]), 200)

    def block_io(model):
        ios = []
        hooks = [
            b.register_forward_hook(lambda m, i, o: ios.append((m, i[0], o)))
            for s in model.stages
            for b in s.blocks
        ]
        model.train()(ids)
        for h in hooks:
            h.remove()
        return [(m, x, y) for m, x, y in ios if isinstance(m.shortcut, nn.Identity)]

    for zero_init in (True, False):
        model = small("vdcnn17", block=block, zero_init_residual=zero_init)
        ios = block_io(model)
        assert len(ios) >= 4
        for m, x, y in ios:
            # Basic/bottleneck end in ReLU(branch + x): identity on their non-negative
            # inputs. Pre-activation blocks have no post-add ReLU: identity outright.
            expected = x if block == "preact" else torch.relu(x)
            same = torch.equal(y, expected)
            assert same == zero_init, (block, zero_init)


@pytest.mark.parametrize("block", BLOCK_TYPES)
def test_zero_init_residual_still_trains(block):
    model = small("vdcnn9", block=block, zero_init_residual=True).train()
    out = model(pad_batch(random_texts([120, 70]), 120))
    nn.functional.cross_entropy(out, torch.tensor([1, 2])).backward()
    last = {
        "basic": lambda b: b.bn2.weight,
        "preact": lambda b: b.conv2.weight,
        "bottleneck": lambda b: b.bn3.weight,
    }[block]
    for stage in model.stages:
        for b in stage.blocks:
            assert (last(b) == 0).all()
            # The zeroed tensor must receive a gradient, or the branch would stay dead.
            assert last(b).grad is not None and last(b).grad.abs().sum() > 0


@pytest.mark.parametrize("downsampling,block", list(itertools.product(DOWNSAMPLING_TYPES, BLOCK_TYPES)))
def test_bfloat16_autocast(downsampling, block):
    torch.manual_seed(0)
    model = small("vdcnn17", downsampling=downsampling, block=block).train()
    ids = pad_batch(random_texts([300, 40, 128]), 300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids)
        loss = nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2]))
    assert logits.shape == (3, 7) and logits.dtype == torch.bfloat16
    assert torch.isfinite(logits.float()).all()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        ref = model(ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(ids).float()
    assert torch.isfinite(low).all()
    # Sanity only: tiny widths in bf16 flip some k-max selections, so logits drift a bit.
    cos = torch.nn.functional.cosine_similarity(low.flatten(), ref.flatten(), dim=0)
    assert cos > 0.9


def test_dropout_is_active_only_in_training():
    model = small("vdcnn9", dropout=0.5)
    ids = pad_batch(random_texts([100, 80]), 100)
    model.train()
    torch.manual_seed(0)
    a = model(ids)
    b = model(ids)
    assert not torch.allclose(a, b)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids), model(ids))


@pytest.mark.parametrize("input_channels", [0, 2])
def test_input_dropout_zeroes_whole_positions_in_training_only(input_channels):
    """``input_dropout`` zeroes every channel of a dropped position (character or time step) and
    scales the kept ones; in eval mode the model is the one without it."""
    torch.manual_seed(0)
    extra = {"input_channels": input_channels} if input_channels else {"input_ngram_orders": (2, 3)}
    model = small("vdcnn9", input_dropout=0.5, **extra)
    plain = small("vdcnn9", **extra)
    plain.load_state_dict(model.state_dict())
    if input_channels:
        ids = torch.randn(2, input_channels, 100)
    else:
        ids = pad_batch(random_texts([100, 100]), 100)
    seen = []
    model.stem.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    plain.stem.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    model.train()
    plain.train()
    torch.manual_seed(1)
    model(ids)
    plain(ids)
    dropped, full = seen
    zero = (dropped == 0).all(dim=1)  # (B, L): positions whose every channel is zero
    assert 0.3 < zero.float().mean() < 0.7
    torch.testing.assert_close(dropped[~zero.unsqueeze(1).expand_as(dropped)], 2 * full[~zero.unsqueeze(1).expand_as(full)])
    plain.load_state_dict(model.state_dict())  # the BatchNorm statistics the dropped input moved
    model.eval()
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids), plain(ids))


def test_forward_features_and_head_compose():
    model = small("vdcnn9").eval()
    ids = pad_batch(random_texts([100, 80]), 100)
    with torch.no_grad():
        feats = model.forward_features(ids)
        assert feats.shape == (2, 32 * 8) == (2, model.num_features)
        torch.testing.assert_close(model.forward_head(feats), model(ids))


def test_model_files_import_only_torch_and_stdlib():
    root = Path(__file__).resolve().parents[2] / "vdcnn_res" / "model"
    allowed = set(sys.stdlib_module_names) | {"torch"}
    for fname in sorted(p.name for p in root.glob("*.py")):
        tree = ast.parse((root / fname).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: only the model-side modules
                    assert node.level == 1 or node.module == "errors", (fname, node.module)
                    continue
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                assert top in allowed, f"{fname} imports {top}"


@pytest.mark.parametrize("block", BLOCK_TYPES)
def test_sync_batchnorm_conversion_keeps_the_statistics_masked(block):
    """Lightning's trainer.sync_batchnorm swaps every BatchNorm for torch's SyncBatchNorm (one
    argument, no mask): the network still normalises over valid positions only (here without a
    process group, where SyncBatchNorm computes like BatchNorm)."""
    torch.manual_seed(0)
    model = small("vdcnn17", block=block, downsampling="conv").train().double()
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    assert not any(type(m).__name__ == "MaskedBatchNorm1d" for m in synced.modules())
    texts = random_texts([70, 300])
    expected = model(pad_batch(texts, 300))
    for n in (300, 500):
        torch.testing.assert_close(synced(pad_batch(texts, n)), expected, rtol=0, atol=1e-6 * expected.abs().max().item())

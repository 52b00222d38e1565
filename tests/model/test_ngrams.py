"""The hashed character n-gram bag beside the CNN (ModelConfig.ngram_orders)."""

import pytest
import torch

from vdcnn_res.errors import UserError
from vdcnn_res.model import HashedNGramBag, ModelConfig, create_model, list_models

SMALL = {"num_classes": 5, "channels": (8, 8, 16, 16), "hidden_size": 16, "embedding_dim": 8}
NGRAMS = {"ngram_orders": (1, 2, 3), "ngram_buckets": 997, "ngram_dim": 6}

pytestmark = pytest.mark.usefixtures("one_thread")


def padded(rows: list[list[int]], length: int) -> torch.Tensor:
    return torch.tensor([r + [0] * (length - len(r)) for r in rows])


def test_bag_counts_only_ngrams_inside_the_text():
    bag = HashedNGramBag((1, 2), buckets=101, dim=3)
    ids = padded([[5, 6, 7]], 6)
    # 3 unigrams + 2 bigrams, the mean of their rows; padding never contributes
    got = bag(ids, torch.tensor([3]))
    rows = torch.stack([bag.embedding.weight[r] for r in _rows(bag, [5, 6, 7])]).mean(0)
    torch.testing.assert_close(got[0], rows)


def _rows(bag: HashedNGramBag, ids: list[int]) -> list[int]:
    """The table rows of every n-gram of `ids`, computed by hand with the documented hash."""
    P, Q, OFFSET = 1_000_003, 2_147_483_647, 0x9E3779B1
    rows = []
    for n in bag.orders:
        for i in range(len(ids) - n + 1):
            h = 0
            for t in ids[i : i + n]:
                h = (h * P + t) % Q
            rows.append((h + n * OFFSET) % bag.buckets)
    return rows


def _bag_as_first_written(bag: HashedNGramBag, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The bag's forward before `ngram_rows` was split out of it, verbatim: the reference it must still equal."""
    B, L = input_ids.shape
    ids = input_ids.long()
    total = bag.embedding.weight.new_zeros(B, bag.embedding.embedding_dim)
    count = lengths.new_zeros(B)
    h = torch.zeros_like(ids)
    for n in range(1, bag.orders[-1] + 1):
        if n > L:
            break
        h = torch.remainder(h[:, : L - n + 1] * 1_000_003 + ids[:, n - 1 :], 2_147_483_647)
        if n not in bag.orders:
            continue
        valid = torch.arange(L - n + 1, device=ids.device)[None, :] < (lengths - n + 1)[:, None]
        rows = torch.remainder(h + n * 0x9E3779B1, bag.buckets)
        total = total + (bag.embedding(rows) * valid.unsqueeze(-1)).sum(dim=1)
        count = count + valid.sum(dim=1)
    return total / count.clamp(min=1).unsqueeze(-1).to(total.dtype)


@pytest.mark.parametrize("orders", [(1,), (2, 4), (1, 2, 3, 4, 5), (3, 5), (6,)])
@pytest.mark.parametrize("length", [1, 2, 4, 5, 9, 40])
def test_forward_is_bit_for_bit_the_first_formula(orders, length):
    """Random ids (padding id 0 included, also inside texts) and lengths from 0 to the padded
    length, some shorter than the largest order; the output must not move by a single bit."""
    gen = torch.Generator().manual_seed(length * 31 + sum(orders))
    bag = HashedNGramBag(orders, buckets=1009, dim=7)
    torch.nn.init.normal_(bag.embedding.weight, generator=gen)
    for batch in (1, 6):
        ids = torch.randint(0, 300, (batch, length), generator=gen)
        lengths = torch.randint(0, length + 1, (batch,), generator=gen)
        lengths[0] = length
        assert torch.equal(bag(ids, lengths), _bag_as_first_written(bag, ids, lengths))


@pytest.mark.parametrize("orders", [(1, 2, 3, 4, 5), (2, 4)])
def test_table_gradient_is_the_first_formulas(orders):
    """The bag looks every order up at once (one dense table gradient per step instead of one per
    order): the gradient it gives the table is the first formula's, up to float summation order."""
    gen = torch.Generator().manual_seed(7)
    bag = HashedNGramBag(orders, buckets=211, dim=5)  # few buckets: many n-grams share rows
    torch.nn.init.normal_(bag.embedding.weight, generator=gen)
    ids = torch.randint(1, 40, (4, 30), generator=gen)
    lengths = torch.tensor([30, 17, 3, 0])
    weights = torch.randn(4, 5, generator=gen)
    grads = []
    for forward in (bag, lambda i, n: _bag_as_first_written(bag, i, n)):
        bag.zero_grad()
        (forward(ids, lengths) * weights).sum().backward()
        grads.append(bag.embedding.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-7)


def test_ngram_rows_are_the_documented_hash_with_their_validity():
    bag = HashedNGramBag((1, 3, 4), buckets=997, dim=2)
    text = [5, 6, 7, 8, 9]
    listed = bag.ngram_rows(padded([text], 8), torch.tensor([5]))
    assert [n for n, _, _ in listed] == [1, 3, 4]
    got = [int(r) for _, rows, valid in listed for r, ok in zip(rows[0], valid[0]) if ok]
    assert got == _rows(bag, text)
    assert [rows.shape[1] for _, rows, _ in listed] == [8, 6, 5]  # one per start position of the padded row
    short = bag.ngram_rows(padded([[5, 6]], 3), torch.tensor([2]))
    assert [(n, rows.shape[1], int(valid.sum())) for n, rows, valid in short] == [(1, 3, 2), (3, 1, 0), (4, 0, 0)]


def test_bag_output_does_not_depend_on_padding():
    torch.manual_seed(0)
    bag = HashedNGramBag((1, 2, 3, 4, 5), buckets=4099, dim=5)
    ids = padded([[3, 4, 5, 6, 7, 8, 9], [11, 12], [13]], 7)
    lengths = torch.tensor([7, 2, 1])
    longer = torch.cat([ids, torch.zeros(3, 9, dtype=torch.long)], dim=1)
    torch.testing.assert_close(bag(longer, lengths), bag(ids, lengths), atol=1e-6, rtol=1e-6)


def test_same_ngram_same_row_in_any_text_and_position():
    bag = HashedNGramBag((3,), buckets=10_007, dim=4)
    a = bag(padded([[9, 1, 2, 3]], 4)[:, 1:], torch.tensor([3]))
    b = bag(padded([[1, 2, 3, 0, 0]], 5), torch.tensor([3]))
    torch.testing.assert_close(a, b)


def test_empty_text_gives_zeros():
    bag = HashedNGramBag((1, 2), buckets=11, dim=3)
    assert bag(padded([[]], 4), torch.tensor([0])).abs().sum() == 0


@pytest.mark.parametrize("name", list_models())
def test_model_with_ngrams_is_padding_invariant_and_trains(name):
    torch.manual_seed(0)
    model = create_model(name, **SMALL, **NGRAMS).eval()
    ids = padded([[3, 4, 5] * 30, [7, 8] * 5, [9]], 90)
    lengths = torch.tensor([90, 10, 1])
    logits = model(ids, lengths)
    longer = torch.cat([ids, torch.zeros(3, 77, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(longer, lengths), logits, atol=1e-5, rtol=1e-5)
    assert model.num_features == 16 * 8 + 6 == model.forward_features(ids, lengths).shape[1]
    model.train()
    model(ids, lengths).sum().backward()
    assert model.ngrams.embedding.weight.grad.abs().sum() > 0
    assert model.ngram_head.fc.weight.grad.abs().sum() > 0


def test_ngram_branch_adds_its_logits_to_the_cnn():
    torch.manual_seed(0)
    model = create_model("vdcnn9", **SMALL, **NGRAMS).eval()
    ids = padded([[3, 4, 5, 6]], 4)
    feats = model.forward_features(ids)
    cnn, ngram = feats.split([model.config.num_features, 6], dim=1)
    torch.testing.assert_close(model(ids), model.head(cnn) + model.ngram_head(ngram))


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("ngrams", [{}, NGRAMS], ids=["cnn", "cnn+bag"])
def test_branch_logits_are_what_the_head_sums(name, ngrams):
    torch.manual_seed(0)
    model = create_model(name, **SMALL, **ngrams).eval()
    with torch.no_grad():
        model.temperature.fill_(2.0)
    ids = padded([[3, 4, 5, 6], [7, 8]], 4)
    branches = model.branch_logits(model.forward_features(ids))
    assert sorted(branches) == (["cnn", "ngrams"] if ngrams else ["cnn"])
    torch.testing.assert_close(model(ids), sum(branches.values()) / 2.0)


def test_off_by_default_and_validated():
    assert ModelConfig().ngram_orders == ()
    assert create_model("vdcnn9", **SMALL).ngrams is None
    with pytest.raises(UserError, match="ngram_orders must contain positive ints"):
        ModelConfig(ngram_orders=(0, 2))
    with pytest.raises(UserError, match="ngram_buckets and ngram_dim must be >= 1"):
        ModelConfig(ngram_orders=(1,), ngram_buckets=0)
    assert ModelConfig.from_dict({"ngram_orders": [1, 2]}).ngram_orders == (1, 2)


@pytest.mark.parametrize("ngrams", [NGRAMS, {"input_ngram_orders": (2, 3), "input_ngram_buckets": 1009}], ids=["bag", "input"])
def test_onnx_export_keeps_the_ngrams(tmp_path, ngrams):
    pytest.importorskip("onnxruntime")
    from vdcnn_res.inference.onnx import export_onnx

    torch.manual_seed(0)
    model = create_model("vdcnn9", **SMALL, **ngrams).eval()
    export_onnx(model, tmp_path / "model.onnx")  # verifies against PyTorch on two other shapes


# --------------------------------------------------------------------------- n-grams in the CNN's input

INPUT_NGRAMS = {"input_ngram_orders": (2, 3), "input_ngram_buckets": 1009}


def test_positional_ngrams_sum_the_rows_of_the_ngrams_starting_at_each_position():
    from vdcnn_res.model.ngrams import PositionalNGramEmbedding

    torch.manual_seed(0)
    layer = PositionalNGramEmbedding((2, 3), buckets=1009, dim=4)
    ids, lengths = padded([[3, 4, 5, 6], [7, 8]], 5), torch.tensor([4, 2])
    out = layer(ids, lengths)
    assert out.shape == (2, 5, 4)
    table = layer.hashing.embedding
    for b, n in enumerate(lengths.tolist()):
        for i in range(5):
            expected = torch.zeros(4)
            for (order, rows, valid) in layer.hashing.ngram_rows(ids, lengths):
                if i < rows.shape[1] and valid[b, i]:
                    expected = expected + table.weight[rows[b, i]]
            torch.testing.assert_close(out[b, i], expected)
    assert (out[1, 2:] == 0).all() and (out[0, 3] == 0).all()  # no 2-gram starts at a text's last position
    wider = torch.cat([ids, torch.zeros(2, 6, dtype=torch.long)], dim=1)
    torch.testing.assert_close(layer(wider, lengths)[:, :5], out)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("bag", [{}, NGRAMS], ids=["cnn", "cnn+bag"])
def test_model_with_input_ngrams_is_padding_invariant_and_trains_them_at_the_bags_rate(name, bag):
    from vdcnn_res.training.optim import parameter_groups

    torch.manual_seed(0)
    model = create_model(name, **SMALL, **bag, **INPUT_NGRAMS).eval()
    ids = padded([[3, 4, 5] * 30, [7, 8] * 5, [9]], 90)
    lengths = torch.tensor([90, 10, 1])
    logits = model(ids, lengths)
    longer = torch.cat([ids, torch.zeros(3, 77, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(longer, lengths), logits, atol=1e-5, rtol=1e-5)
    without = create_model(name, **SMALL, **bag)
    without.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("input_ngrams.")})
    assert not torch.allclose(without.eval()(ids, lengths), logits)  # the n-grams change what the CNN reads
    model.train()
    model(ids, lengths).sum().backward()
    assert model.input_ngrams.hashing.embedding.weight.grad.abs().sum() > 0
    table = model.input_ngrams.hashing.embedding.weight
    scaled = [g for g in parameter_groups(model, 0.05, lr=1e-3, ngram_lr_scale=10.0) if g.get("lr") == 1e-2]
    assert any(p is table for g in scaled for p in g["params"])


def test_input_ngrams_are_off_by_default_and_validated():
    assert ModelConfig().input_ngram_orders == () and create_model("vdcnn9", **SMALL).input_ngrams is None
    with pytest.raises(UserError, match="input_ngram_orders must contain positive ints"):
        ModelConfig(input_ngram_orders=(0, 2))
    with pytest.raises(UserError, match="input_ngram_buckets must be >= 1"):
        ModelConfig(input_ngram_orders=(2,), input_ngram_buckets=0)
    with pytest.raises(UserError, match="a series model"):
        ModelConfig(input_channels=2, input_ngram_orders=(2,))
    assert ModelConfig.from_dict({"input_ngram_orders": [2, 3]}).input_ngram_orders == (2, 3)

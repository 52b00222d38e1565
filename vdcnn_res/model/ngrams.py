"""A bag of hashed character n-grams: the fastText / TF-IDF view of a text, next to the CNN.

On a few thousand labelled texts a character CNN from scratch trails linear models over
n-grams (docs/results.md). This module gives the network that view: every character n-gram
of the chosen orders inside a text's valid length is hashed into one of ``buckets`` rows of
an embedding table, and the rows are averaged per text. The hash works on token ids, so it
needs no tokenizer change and covers any script (CJK n-grams are words and phrases).

Hash: h_1 = id, h_n = (h_{n-1} * P + id_{i+n-1}) mod Q for a prime Q < 2^31 (no int64
overflow), and order n adds its own offset, so the orders land in different rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HashedNGramBag", "PositionalNGramEmbedding"]

_P = 1_000_003  # multiplier (prime, larger than any vocabulary)
_Q = 2_147_483_647  # modulus: 2^31 - 1 (prime); h * P stays below 2^63
_ORDER_OFFSET = 0x9E3779B1  # spreads the orders apart before the final modulo


class HashedNGramBag(nn.Module):
    """Token ids (B, L) + lengths (B,) -> mean embedding of the hashed n-grams (B, dim)."""

    def __init__(self, orders: tuple[int, ...], buckets: int, dim: int) -> None:
        super().__init__()
        self.orders = tuple(sorted(orders))
        self.buckets = buckets
        self.embedding = nn.Embedding(buckets, dim)

    def ngram_rows(self, input_ids: Tensor, lengths: Tensor) -> list[tuple[int, Tensor, Tensor]]:
        """(n, rows, valid) for each order n, ascending: the table row of the n-gram starting at
        each position (B, max(L - n + 1, 0)) and whether it lies inside the text. `forward`
        averages these rows; explanations (inference/explain.py) need them one by one to credit
        each n-gram to the characters it covers."""
        L = input_ids.shape[1]
        ids = input_ids.long()
        out = []
        h = torch.zeros_like(ids)
        for n in range(1, self.orders[-1] + 1):
            # Start positions; none when n > L, without a branch on L (one ONNX graph for every length).
            starts = torch.sym_max(L - n + 1, 0)
            h = torch.remainder(h[:, :starts] * _P + ids[:, n - 1 : n - 1 + starts], _Q)  # (B, starts): n-grams from i
            if n not in self.orders:
                continue
            valid = torch.arange(starts, device=ids.device)[None, :] < (lengths - n + 1)[:, None]  # (B, starts)
            out.append((n, torch.remainder(h + n * _ORDER_OFFSET, self.buckets), valid))
        return out

    def forward(self, input_ids: Tensor, lengths: Tensor) -> Tensor:
        listed = self.ngram_rows(input_ids, lengths)
        # One lookup for every order, so the backward builds one dense gradient of the table, not
        # one per order; the sums then run per order, in order, as before (the same bits).
        looked_up = self.embedding(torch.cat([rows for _, rows, _ in listed], dim=1)).split([rows.shape[1] for _, rows, _ in listed], dim=1)
        total = self.embedding.weight.new_zeros(input_ids.shape[0], self.embedding.embedding_dim)
        count = lengths.new_zeros(input_ids.shape[0])
        for vectors, (_, _, valid) in zip(looked_up, listed):
            total = total + (vectors * valid.unsqueeze(-1)).sum(dim=1)  # (B, dim)
            count = count + valid.sum(dim=1)
        return total / count.clamp(min=1).unsqueeze(-1).to(total.dtype)

    def extra_repr(self) -> str:
        return f"orders={self.orders}, buckets={self.buckets}"


class PositionalNGramEmbedding(nn.Module):
    """Token ids (B, L) + lengths (B,) -> (B, L, dim): at each position the sum of the hashed
    embeddings of the n-grams (of ``orders``) that start there and lie inside the text; zero
    where none does. Added to the character embeddings, it gives the CNN's first layer the
    n-grams' identities (the bag's view) at their places, for the convolutions to compose."""

    def __init__(self, orders: tuple[int, ...], buckets: int, dim: int) -> None:
        super().__init__()
        self.hashing = HashedNGramBag(orders, buckets, dim)  # its hash and its table

    def forward(self, input_ids: Tensor, lengths: Tensor) -> Tensor:
        B, L = input_ids.shape
        table = self.hashing.embedding
        listed = self.hashing.ngram_rows(input_ids, lengths)
        # One lookup for every order, as in the bag: the backward builds one dense table gradient.
        looked_up = table(torch.cat([rows for _, rows, _ in listed], dim=1)).split([rows.shape[1] for _, rows, _ in listed], dim=1)
        out = table.weight.new_zeros(B, L, table.embedding_dim)
        for vectors, (_, rows, valid) in zip(looked_up, listed):
            out = out + F.pad(vectors * valid.unsqueeze(-1), (0, 0, 0, L - rows.shape[1]))
        return out

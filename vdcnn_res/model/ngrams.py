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
from torch import Tensor, nn

__all__ = ["HashedNGramBag"]

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

    def forward(self, input_ids: Tensor, lengths: Tensor) -> Tensor:
        B, L = input_ids.shape
        ids = input_ids.long()
        total = self.embedding.weight.new_zeros(B, self.embedding.embedding_dim)
        count = lengths.new_zeros(B)
        h = torch.zeros_like(ids)
        for n in range(1, self.orders[-1] + 1):
            if n > L:
                break
            h = torch.remainder(h[:, : L - n + 1] * _P + ids[:, n - 1 :], _Q)  # (B, L - n + 1): n-grams from i
            if n not in self.orders:
                continue
            valid = torch.arange(L - n + 1, device=ids.device)[None, :] < (lengths - n + 1)[:, None]  # (B, L-n+1)
            rows = torch.remainder(h + n * _ORDER_OFFSET, self.buckets)
            total = total + (self.embedding(rows) * valid.unsqueeze(-1)).sum(dim=1)  # (B, dim)
            count = count + valid.sum(dim=1)
        return total / count.clamp(min=1).unsqueeze(-1).to(total.dtype)

    def extra_repr(self) -> str:
        return f"orders={self.orders}, buckets={self.buckets}"

"""A small transformer encoder that classifies token sequences."""

from __future__ import annotations

from torch import Tensor, nn


class SequenceTransformer(nn.Module):
    """Token embedding -> ``layers`` x ``nn.TransformerEncoderLayer`` -> mean over positions -> linear head.

    Stock torch layers only: fastmaml's exact routing (``fastmaml.core.exact``) makes the second-order
    meta-gradient through its attention and layer norms exact on both execution paths. No positional
    encoding: the mean over positions makes the output independent of the order of the tokens.

    Example:
        >>> SequenceTransformer(vocab=16, ways=5)(torch.zeros(2, 12, dtype=torch.long)).shape
        torch.Size([2, 5])
    """

    def __init__(self, vocab: int, ways: int, dim: int = 32, heads: int = 4, layers: int = 1) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not a multiple of heads={heads}; pick dim = heads * head size")
        self.embedding = nn.Embedding(vocab, dim)
        self.encoder = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True) for _ in range(layers))
        self.head = nn.Linear(dim, ways)

    def forward(self, tokens: Tensor) -> Tensor:  # (examples, length) int -> (examples, ways)
        x = self.embedding(tokens)  # (examples, length, dim)
        for layer in self.encoder:
            x = layer(x)
        return self.head(x.mean(-2))

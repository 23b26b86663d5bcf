"""Few-shot classification of token sequences: a synthetic task family for sequence models.

Nothing to download: every task is drawn from a generator, like the sinusoid. It is the worked
example of meta-learning a transformer (README, recipe ``sequence-5w1s``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastmaml.tasks.batch import TaskBatch


class TokenSequences:
    """N-way K-shot episodes over noisy, shifted copies of random token sequences.

    Each task draws ``ways`` class prototypes: sequences of ``length`` tokens uniform over ``vocab``.
    An example of a class is its prototype with each token replaced, with probability ``noise``, by a
    uniform random token, then rotated by a random number of positions, so a class is recognised by
    what its tokens are, not where they stand. Labels ``0..ways-1`` follow the prototypes' random draw,
    so the label of a sequence means nothing across tasks: the model has to adapt to each task's
    support set. Meta-train and meta-test splits differ by the generator the caller passes.

    Example:
        >>> tasks = TokenSequences(ways=5, shots=1, query_shots=5)
        >>> batch = tasks.sample_tasks(16, torch.Generator().manual_seed(0))
        >>> tuple(batch.support_x.shape), batch.support_x.dtype, tuple(batch.query_y.shape)
        ((16, 5, 12), torch.int64, (16, 25))
    """

    def __init__(
        self, ways: int = 5, shots: int = 1, query_shots: int = 15, length: int = 12, vocab: int = 16,
        noise: float = 0.2,
    ) -> None:
        for name, value in (("ways", ways), ("shots", shots), ("query_shots", query_shots), ("length", length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}; it must be an integer >= 1")
        if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 2:
            raise ValueError(f"vocab={vocab!r}; sequences need at least 2 distinct tokens")
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise={noise!r}; it is a probability, in [0, 1]")
        self.ways, self.shots, self.query_shots = ways, shots, query_shots
        self.length, self.vocab, self.noise = length, vocab, noise

    def sample_examples(self, prototypes: Tensor, count: int, generator: torch.Generator) -> Tensor:
        """``count`` noisy, rotated copies of each prototype: (tasks, ways, length) -> (tasks, ways, count, length)."""
        shape = (*prototypes.shape[:2], count, self.length)
        tokens = prototypes.unsqueeze(2).expand(shape)
        replace = torch.rand(shape, generator=generator) < self.noise
        tokens = torch.where(replace, torch.randint(self.vocab, shape, generator=generator), tokens)
        shift = torch.randint(self.length, shape[:3] + (1,), generator=generator)
        positions = (torch.arange(self.length) + shift) % self.length  # (tasks, ways, count, length)
        return tokens.gather(-1, positions)

    def sample_tasks(self, tasks: int, generator: torch.Generator) -> TaskBatch:
        """A meta-batch of ``tasks`` episodes; support (tasks, ways*shots, length), labels class-major."""
        prototypes = torch.randint(self.vocab, (tasks, self.ways, self.length), generator=generator)
        examples = self.sample_examples(prototypes, self.shots + self.query_shots, generator)
        labels = torch.arange(self.ways).view(1, -1, 1).expand(tasks, -1, examples.shape[2])
        k = self.shots

        def flat(t: Tensor) -> Tensor:  # (tasks, ways, n, ...) -> (tasks, ways*n, ...)
            return t.flatten(1, 2)

        return TaskBatch(flat(examples[:, :, :k]), flat(labels[:, :, :k]), flat(examples[:, :, k:]),
                         flat(labels[:, :, k:]))

"""Forward-or-backward task families: what HalfCheetahDir and AntDir share, the draw of each task's direction."""

from __future__ import annotations

import torch


class Directions:
    """Tasks ``{"direction": d}``: run forward (d = +1) or backward (d = -1), backward with probability
    ``backward`` (1/2 by default; ``env_options.backward``). Mixed in before a family's base class, whose
    constructor takes the other arguments.

    maml_rl's direction environments ran backward below 0.4 of the goals its training loop drew: U[0.1, 0.8] at
    the ICML deadline (commit 7fe27d7), 3 tasks in 7; U[0, 2] for HalfCheetah and U[0, 3] for Ant in the code
    committed with the paper's results (285393d), 1 in 5 and 2 in 15 (benchmarks/cheetah_dir_gap.md).
    """

    def __init__(self, *args, backward: float = 0.5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not 0 <= backward <= 1:
            raise ValueError(f"backward={backward}; use a probability in [0, 1] (0.5: forward and backward alike)")
        self.backward = float(backward)

    def sample_tasks(self, n: int, generator: torch.Generator) -> list[dict]:
        if self.backward == 0.5:  # the draws of every run before the option
            signs = torch.randint(0, 2, (n,), generator=generator) * 2 - 1
        else:
            signs = torch.where(torch.rand(n, generator=generator) < self.backward, -1, 1)
        return [{"direction": int(d)} for d in signs]

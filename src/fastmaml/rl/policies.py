"""Policies: any ``nn.Module`` mapping observations to the parameters of an action distribution.

A module that returns a pair ``(mean, log_std)`` is a diagonal Gaussian policy (Box actions); one that
returns a single tensor of logits is a categorical policy (Discrete actions). The functions below work
on those outputs, so they run unchanged under ``torch.func.vmap`` and ``functional_call``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from typing_extensions import TypeIs

Output = Tensor | tuple[Tensor, Tensor]
_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}
# "torch": nn.Linear's default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases; "glorot": Glorot-uniform
# weights and zero biases, as rllab's MLP (lasagne's default) in the MAML paper's code (cbfinn/maml_rl).
INITS = ("torch", "glorot")


def _mlp(sizes: list[int], activation: str, init: str = "torch") -> nn.Sequential:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation={activation!r}; use one of {', '.join(_ACTIVATIONS)}")
    if init not in INITS:
        raise ValueError(f"init={init!r}; use one of {', '.join(INITS)}")
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(fan_in, fan_out)
        if init == "glorot":
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i < len(sizes) - 2:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class GaussianPolicy(nn.Module):
    """Diagonal Gaussian policy for Box actions: an MLP gives the mean, ``log_std`` is a learned vector.

    The MAML paper's policy (section 5.3) is ``GaussianPolicy(obs_dim, action_dim, (100, 100))``.

    Example:
        >>> policy = GaussianPolicy(2, 2, hidden=(100, 100))
        >>> mean, log_std = policy(torch.zeros(5, 2))
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden: tuple[int, ...] = (100, 100),
                 activation: str = "relu", init_std: float = 1.0, init: str = "torch") -> None:
        super().__init__()
        if init_std <= 0:
            raise ValueError(f"init_std={init_std}; the initial action standard deviation must be > 0")
        self.mean = _mlp([obs_dim, *hidden, action_dim], activation, init)
        self.log_std = nn.Parameter(torch.full((action_dim,), math.log(init_std)))

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        mean = self.mean(obs)
        return mean, self.log_std.expand_as(mean)


class CategoricalPolicy(nn.Module):
    """Categorical policy for Discrete actions: an MLP gives the logits.

    Example:
        >>> policy = CategoricalPolicy(4, 2, hidden=(32, 32))  # 4 observation values, 2 actions
        >>> policy(torch.zeros(5, 4)).shape  # logits
        torch.Size([5, 2])
    """

    def __init__(self, obs_dim: int, actions: int, hidden: tuple[int, ...] = (100, 100),
                 activation: str = "relu", init: str = "torch") -> None:
        super().__init__()
        self.logits = _mlp([obs_dim, *hidden, actions], activation, init)

    def forward(self, obs: Tensor) -> Tensor:
        return self.logits(obs)


def is_gaussian(output: Output) -> TypeIs[tuple[Tensor, Tensor]]:
    return isinstance(output, (tuple, list))


def log_prob(output: Output, actions: Tensor) -> Tensor:
    """log pi(a|s), summed over action dimensions: shape ``output``'s batch shape."""
    if is_gaussian(output):
        mean, log_std = output
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    return torch.log_softmax(output, -1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def kl(old: Output, new: Output) -> Tensor:
    """KL(old || new) per observation (closed form)."""
    if is_gaussian(old) and is_gaussian(new):
        (mu0, log_std0), (mu1, log_std1) = old, new
        var0, var1 = torch.exp(2 * log_std0), torch.exp(2 * log_std1)
        return (log_std1 - log_std0 + (var0 + (mu0 - mu1) ** 2) / (2 * var1) - 0.5).sum(-1)
    if is_gaussian(old) or is_gaussian(new):
        raise TypeError("kl() needs two outputs of the same kind: two (mean, log_std) pairs or two logits")
    log_p, log_q = torch.log_softmax(old, -1), torch.log_softmax(new, -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def sample(output: Output, generator: torch.Generator) -> Tensor:
    """Actions drawn from the distribution, with ``generator`` (exact resume needs its state only)."""
    if is_gaussian(output):
        mean, log_std = output
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + torch.exp(log_std) * noise
    probs = torch.softmax(output, -1)
    flat = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
    return flat.reshape(probs.shape[:-1])


def mode(output: Output) -> Tensor:
    """The most likely action: the mean (Gaussian) or the arg-max (categorical)."""
    return output[0] if is_gaussian(output) else output.argmax(-1)


def detach(output: Output) -> Output:
    if is_gaussian(output):
        return output[0].detach(), output[1].detach()
    return output.detach()

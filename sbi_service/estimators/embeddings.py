"""Embedding nets: x_z (batch, *x_shape) -> context (batch, dim_out).

Chosen by name in the estimator's ``embedding`` config and rebuilt from it on load:

    {"kind": "identity"}                                   x flattened
    {"kind": "mlp", "hidden": [64, 64], "dim_out": 16}     a ReLU MLP on flattened x
    {"kind": "cnn1d", "channels": [16, 32], "kernel": 5, "dim_out": 16}
        a 1-D CNN for time series x (T,) or (C, T)
    {"kind": "deepset", "hidden": [64, 64], "dim_out": 16, "masked": false}
        permutation invariant over the set axis of x (set_size, dim_x)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sbi_service.errors import UserError


class Identity(nn.Module):
    """Flattens x: context = x_z.reshape(batch, -1)."""

    def __init__(self, x_shape: tuple[int, ...]):
        super().__init__()
        self.dim_out = math.prod(x_shape)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1)


class MLPEmbedding(nn.Module):
    """A ReLU MLP on flattened x: dim_x -> hidden... -> dim_out."""

    def __init__(self, x_shape: tuple[int, ...], hidden: list[int] = (64, 64), dim_out: int = 16):
        super().__init__()
        layers, width = [], math.prod(x_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, dim_out))
        self.net = nn.Sequential(*layers)
        self.dim_out = dim_out

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.reshape(x.shape[0], -1))


def _mlp(width: int, hidden: list[int], dim_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, dim_out))
    return nn.Sequential(*layers)


class CNN1DEmbedding(nn.Module):
    """1-D CNN for time series: x (batch, T) or (batch, C, T) -> (batch, dim_out).

    For each entry of ``channels``: Conv1d(kernel, padding kernel // 2) -> ReLU ->
    MaxPool1d(2) (while T > 1); then adaptive average pooling to ``pooled`` time bins,
    flattening, and a linear layer.
    """

    def __init__(
        self,
        x_shape: tuple[int, ...],
        channels: list[int] = (16, 32),
        kernel: int = 5,
        pooled: int = 4,
        dim_out: int = 16,
    ):
        super().__init__()
        if len(x_shape) not in (1, 2):
            raise UserError(f"cnn1d takes x of shape (T,) or (C, T), got {tuple(x_shape)}")
        in_channels, length = (1, x_shape[0]) if len(x_shape) == 1 else x_shape
        layers: list[nn.Module] = []
        for c in channels:
            layers += [nn.Conv1d(in_channels, int(c), int(kernel), padding=int(kernel) // 2)]
            layers.append(nn.ReLU())
            if length > 1:
                layers.append(nn.MaxPool1d(2))
                length //= 2
            in_channels = int(c)
        layers += [nn.AdaptiveAvgPool1d(int(pooled)), nn.Flatten()]
        self.net = nn.Sequential(*layers, nn.Linear(in_channels * int(pooled), int(dim_out)))
        self.dim_out = int(dim_out)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 2:
            x = x.unsqueeze(1)
        return self.net(x)


class DeepSetEmbedding(nn.Module):
    """Permutation-invariant set embedding (Zaheer et al. 2017): x (batch, n, dim) -> (batch, out).

    e = rho( (1 / m) sum_{j present} phi(x_j) [, log m] ), phi and rho ReLU MLPs.

    ``masked=False``: all n members are present (m = n). ``masked=True``: the last feature
    of each member is a presence flag, 1 for a member and 0 for padding (see
    ``estimators.iid.make_set_data``); after the estimator's z-scoring a member's flag is
    >= 0 and a padding flag is < 0 (flag_z = (flag - mean) / std with 0 < mean <= 1), so
    the net keeps members with flag_z > -1e-3, feeds phi the other features, and gives
    rho log m so the posterior can narrow with the set's size.
    """

    def __init__(
        self,
        x_shape: tuple[int, ...],
        hidden: list[int] = (64, 64),
        dim_out: int = 16,
        masked: bool = False,
    ):
        super().__init__()
        if len(x_shape) != 2:
            raise UserError(f"deepset takes x of shape (set_size, dim_x), got {tuple(x_shape)}")
        self.masked = bool(masked)
        dim_in = x_shape[1] - int(self.masked)
        width = int(hidden[-1]) if hidden else dim_in
        self.phi = _mlp(dim_in, [int(h) for h in hidden[:-1]], width)
        self.rho = _mlp(width + int(self.masked), [int(h) for h in hidden], int(dim_out))
        self.dim_out = int(dim_out)

    def forward(self, x: Tensor) -> Tensor:
        if not self.masked:
            return self.rho(self.phi(x).mean(1))
        present = (x[..., -1] > -1e-3).to(x.dtype)[..., None]  # (batch, n, 1)
        count = present.sum(1).clamp(min=1.0)  # (batch, 1)
        pooled = (self.phi(x[..., :-1]) * present).sum(1) / count
        return self.rho(torch.cat([pooled, torch.log(count)], dim=-1))


EMBEDDINGS: dict[str, type[nn.Module]] = {
    "identity": Identity,
    "mlp": MLPEmbedding,
    "cnn1d": CNN1DEmbedding,
    "deepset": DeepSetEmbedding,
}


def build_embedding(config: dict, x_shape: tuple[int, ...]) -> nn.Module:
    """Build the embedding net named by ``config["kind"]`` with the remaining keys as arguments."""
    args = dict(config)
    kind = args.pop("kind", "identity")
    if kind not in EMBEDDINGS:
        raise UserError(f"unknown embedding {kind!r}; expected one of {', '.join(EMBEDDINGS)}")
    try:
        return EMBEDDINGS[kind](x_shape, **args)
    except TypeError as e:
        raise UserError(f"embedding {kind!r}: bad settings {args} ({e})") from None

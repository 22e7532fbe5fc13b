"""Embedding nets: x_z (batch, *x_shape) -> context (batch, dim_out).

Chosen by name in the estimator's ``embedding`` config and rebuilt from it on load:

    {"kind": "identity"}                                   x flattened
    {"kind": "mlp", "hidden": [64, 64], "dim_out": 16}     a ReLU MLP on flattened x
"""

from __future__ import annotations

import math

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


EMBEDDINGS: dict[str, type[nn.Module]] = {"identity": Identity, "mlp": MLPEmbedding}


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

"""Save and load an estimator as ``config.json`` + ``weights.safetensors``.

Nothing is pickled: the config rebuilds the architecture (``build_estimator``) and
the weights are plain tensors. Loading maps every tensor to the requested device
(CPU by default), whatever device trained the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from sbi_service.errors import ModelFileError, UserError
from sbi_service.estimators.base import Estimator
from sbi_service.estimators.registry import build_estimator

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
# options added after models of a kind were saved, with the value those models were built
# with (today's default differs): fmpe sampled on the uniform grid, maf had ReLU units
SAVED_BEFORE_OPTION = {"fmpe": {"grid_power": 1.0}, "maf": {"activation": "relu"}}


def save_estimator(folder: Path, estimator: Estimator, metadata: dict[str, Any]) -> None:
    """Write ``folder/config.json`` ({"estimator": config, **metadata}) and the weights."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in estimator.state_dict().items()}
    # serialized here and written by Python, so a full disk is an OSError with its errno
    (folder / WEIGHTS_FILE).write_bytes(save(state))
    config = {"estimator": estimator.config, **metadata}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))


def read_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise UserError(f"{folder} has no {CONFIG_FILE}: it is not a model folder") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{folder.name}/{CONFIG_FILE} is not valid JSON ({e})") from None
    if not isinstance(config, dict) or not isinstance(config.get("estimator"), dict):
        raise ModelFileError(f"{folder.name}/{CONFIG_FILE} has no estimator configuration")
    return config


def load_estimator(folder: Path, device: str | torch.device = "cpu") -> tuple[Estimator, dict]:
    """Rebuild the estimator from ``folder`` on ``device``; returns (estimator, config).

    A config or weights file that cannot be read back into the architecture raises
    ``ModelFileError`` (the store checks checksums before this; this catches the rest).
    """
    config = read_config(folder)
    saved = config["estimator"]
    try:  # a damaged config's kind may not even be hashable: TypeError below
        architecture = {**SAVED_BEFORE_OPTION.get(saved.get("kind"), {}), **saved}
        estimator = build_estimator(architecture)
        state = load_file(str(folder / WEIGHTS_FILE), device="cpu")
        # models saved before log-standardization existed read every feature linearly
        state.setdefault("x_log", torch.zeros_like(estimator.x_log))
        estimator.load_state_dict(state)
    except (SafetensorError, FileNotFoundError, RuntimeError, KeyError, TypeError) as e:
        raise ModelFileError(
            f"the model in {folder.name} cannot be loaded from its files ({e}); "
            "restore them or train a new version"
        ) from None
    return estimator.to(device).eval(), config

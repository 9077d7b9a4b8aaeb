"""Loading saved weights into a module, with one readable error when they do not fit."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def load_strict(module: nn.Module, state: dict, where: Path | str) -> None:
    """load_state_dict(strict) with one readable error listing every offending key."""
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(f"weights in {where} do not match {type(module).__name__}: {error}") from error
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"weights in {where} do not match {type(module).__name__}: missing keys {result.missing_keys}, "
            f"unexpected keys {result.unexpected_keys}; the folder was written by a different architecture"
        )

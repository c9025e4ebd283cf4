"""Loading the policy file (the I/O half of `ledger.domain.policy`)."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from ledger.domain.policy import Policy, PolicyError


def load_policy(path: Path | None = None) -> Policy:
    """Load and validate the policy file (the shipped default when no path is given)."""
    try:
        if path is None:
            text = resources.files("ledger").joinpath("policy/default.toml").read_text("utf-8")
        else:
            text = path.read_text("utf-8")
        return Policy.model_validate(tomllib.loads(text))
    except (OSError, tomllib.TOMLDecodeError, ValidationError) as error:
        raise PolicyError(f"policy {path or 'default'}: {error}") from error

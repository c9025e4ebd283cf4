"""Policy as data: a versioned TOML file, validated when loaded."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PolicyError(ValueError):
    """The policy file is missing or invalid."""


class OverpaymentPolicy(BaseModel):
    """Rules for detecting overpayments."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    detect_minimum_minor: int = Field(default=1, ge=1)


class Policy(BaseModel):
    """The whole policy; `version` is recorded by every decision it allows."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: str = Field(min_length=1, max_length=64)
    overpayment: OverpaymentPolicy = OverpaymentPolicy()

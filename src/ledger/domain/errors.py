"""Domain errors: each becomes a refusal or a dead letter with its reason, never a crash."""

from __future__ import annotations


class DomainRuleError(ValueError):
    """A fact or command that breaks a rule of the handling protocol."""


class UnknownAccountError(LookupError):
    """A fact or command names an account that was never opened."""

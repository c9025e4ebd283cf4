"""Domain errors: each becomes a refusal or a dead letter with its reason, never a crash."""

from __future__ import annotations


class DomainRuleError(ValueError):
    """A fact or command that breaks a rule of the handling protocol."""


class UnknownAccountError(LookupError):
    """A fact or command names an account that was never opened."""


class UnauthorizedError(DomainRuleError):
    """A command above its actor's authority under the loaded policy (the reason names a role
    that may take it)."""


class StaleFiring(Exception):
    """A scheduler firing whose item is no longer due (done already, or moved): answered by a
    no-op outcome, never a dead letter."""


class NotDueYet(StaleFiring):
    """A scheduler firing that came before its item is due (the scheduler's clock ran ahead of
    the account worker's): no outcome is recorded, so the same firing, fired again when due,
    still applies."""

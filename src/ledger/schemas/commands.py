"""Staff commands, as received on `ledger.commands` (and built by the CLI and the scheduler).

One JSON object; `type` selects the shape. Common fields: `command_id` (a UUID, the idempotency
key per account), `type`, `account_id`, `actor` (`{"id", "role"}`), `issued_at` (RFC 3339), then
the command's own. Parsing runs the same steps as the inbound contract (size, JSON, depth,
strict validation), and refusals are `InboundRejected` (`not_json`, `contract`, `too_large`).
Every id a command names embeds its account id (`<account id>:<tag>:<n>`): an id of another
account is a `contract` error, so a command can always be routed by its key alone.

`body_sha256` is the digest of what the command asks (everything but `issued_at`): the same
`command_id` with another body is refused as `contract`.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Annotated, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from ledger.schemas.inbound import Date, Identifier, MoneyIn, Text, Timestamp, parse_message

OUTCOME_HEADER: Final = "ledger-reply"
"""A command carrying this header (value `outcome`) is answered by its recorded outcome; a
refusal then goes no dead letter (its caller is waiting for it)."""

ITEM_KINDS: Final = (
    "escrow_expiry",
    "refund_retry",
    "self_correction",
    "follow_up",
    "dormancy",
    "dispute_update",
    "installment_due",
    "deferral_end",
)
"""What the scheduler fires."""

Resolution = Literal["credit", "refund", "escrow", "coupon", "store_credit", "cancel_and_refund"]
Department = Literal["accounting", "risk_management", "operations"]


_CANONICAL_UUID: Final = re.compile("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
"""A UUID in its canonical text (what the CLI and the scheduler send): parsing it would give it
back unchanged, at five times the cost."""


class ActorIn(BaseModel):
    """Who gives the command."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    id: Identifier
    role: Identifier


class _CommandIn(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    command_id: Identifier
    account_id: Identifier
    actor: ActorIn
    issued_at: Timestamp

    @field_validator("command_id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        if _CANONICAL_UUID.fullmatch(value):  # as `str(UUID(value))` writes it: kept as is
            return value
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise ValueError("command_id must be a UUID") from None

    def body_sha256(self) -> str:
        """What the command asks, as a digest (its issue time excluded)."""
        body = self.model_dump(mode="json", exclude={"issued_at"})
        return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()

    def named_ids(self) -> tuple[str, ...]:
        """The ids of the account's items the command names (each embeds the account id)."""
        return ()

    @model_validator(mode="after")
    def _ids_of_this_account(self) -> _CommandIn:
        for item_id in self.named_ids():
            parts = item_id.rsplit(":", 2)
            if len(parts) != 3 or parts[0] != self.account_id:
                raise ValueError(f"{item_id} is not an id of account {self.account_id}")
        return self


class _OverpaymentCommandIn(_CommandIn):
    overpayment_id: Identifier

    def named_ids(self) -> tuple[str, ...]:
        """The overpayment."""
        return (self.overpayment_id,)


class VerifyOverpaymentIn(_OverpaymentCommandIn):
    """A department verifies an overpayment."""

    type: Literal["overpayment.verify"]
    department: Department
    note: Text | None = None


class RejectOverpaymentIn(_OverpaymentCommandIn):
    """A department rejects an overpayment."""

    type: Literal["overpayment.reject"]
    department: Department
    reason: Text


class LegalBasisIn(BaseModel):
    """The law a cancellation rests on."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    level: Literal["local", "state", "federal"]
    reference: Text


class ResolveOverpaymentIn(_OverpaymentCommandIn):
    """Resolve a verified overpayment."""

    type: Literal["overpayment.resolve"]
    resolution: Resolution
    legal_basis: LegalBasisIn | None = None


class RetryRefundIn(_CommandIn):
    """Send a failed refund again."""

    type: Literal["refund.retry"]
    refund_id: Identifier

    def named_ids(self) -> tuple[str, ...]:
        """The refund."""
        return (self.refund_id,)


class ReleaseEscrowIn(_OverpaymentCommandIn):
    """End an escrow hold."""

    type: Literal["escrow.release"]
    to: Literal["refund", "credit", "escheat"]


class FireIn(_CommandIn):
    """The scheduler: an item came due (`attempt` for retries)."""

    type: Literal["schedule.fire"]
    item: Literal[
        "escrow_expiry",
        "refund_retry",
        "self_correction",
        "follow_up",
        "dormancy",
        "dispute_update",
        "installment_due",
        "deferral_end",
    ]
    item_id: Identifier
    due_at: Identifier
    attempt: int | None = Field(default=None, ge=1)

    def named_ids(self) -> tuple[str, ...]:
        """The item (an account-wide item is named by the account id itself)."""
        return () if self.item == "dormancy" else (self.item_id,)


StaffChannel = Literal["phone", "email", "chat", "social"]


class OpenDisputeIn(_CommandIn):
    """A customer disputes a bill through a channel (chargebacks come from processors)."""

    type: Literal["dispute.open"]
    channel: StaffChannel
    reason: Text
    amount: MoneyIn
    invoice_id: Identifier | None = None
    payment_id: Identifier | None = None


class _DisputeCommandIn(_CommandIn):
    dispute_id: Identifier

    def named_ids(self) -> tuple[str, ...]:
        """The dispute."""
        return (self.dispute_id,)


class AssignDisputeIn(_DisputeCommandIn):
    """A dedicated representative for the dispute."""

    type: Literal["dispute.assign"]
    rep: Identifier


class LogContactIn(_DisputeCommandIn):
    """One contact with the customer (the summary and promise are personal data)."""

    type: Literal["dispute.log"]
    channel: StaffChannel
    direction: Literal["in", "out"]
    summary: Text
    promise: Text | None = None
    promise_by: Date | None = None


class InstallmentIn(BaseModel):
    """One installment of a plan."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    due_date: Date
    amount_minor: int = Field(ge=1)


class PlanDisputeIn(_DisputeCommandIn):
    """An installment plan for what is owed in the dispute (any part forgiven written off)."""

    type: Literal["dispute.plan"]
    installments: tuple[InstallmentIn, ...] = Field(min_length=1, max_length=120, strict=False)
    """A JSON array (not strict: strict mode takes only a tuple); each item is strict."""
    forgiven_minor: int = Field(default=0, ge=0)


class DeferDisputeIn(_DisputeCommandIn):
    """Defer payment of the disputed amount."""

    type: Literal["dispute.defer"]
    until: Date


class EscalateDisputeIn(_DisputeCommandIn):
    """Hand the dispute up to a role."""

    type: Literal["dispute.escalate"]
    to_role: Identifier
    reason: Text | None = None


class AdjustDisputeIn(_DisputeCommandIn):
    """Write off part of a disputed bill."""

    type: Literal["dispute.adjust"]
    amount_minor: int = Field(ge=1)
    reason: Text


class ResolveDisputeIn(_DisputeCommandIn):
    """Decide a disputed bill."""

    type: Literal["dispute.resolve"]
    outcome: Literal["customer_favour", "upheld", "withdrawn"]
    settlement: Literal["refund", "credit"] | None = None


class DisputeFeedbackIn(_DisputeCommandIn):
    """The customer's feedback after resolution (the comment is personal data)."""

    type: Literal["dispute.feedback"]
    score: int = Field(ge=1, le=5)
    comment: Text | None = None


StaffCommand = Annotated[
    VerifyOverpaymentIn
    | RejectOverpaymentIn
    | ResolveOverpaymentIn
    | RetryRefundIn
    | ReleaseEscrowIn
    | FireIn
    | OpenDisputeIn
    | AssignDisputeIn
    | LogContactIn
    | PlanDisputeIn
    | DeferDisputeIn
    | EscalateDisputeIn
    | AdjustDisputeIn
    | ResolveDisputeIn
    | DisputeFeedbackIn,
    Field(discriminator="type"),
]
"""Any staff command, selected by its `type`."""

COMMAND_TYPES: Final[frozenset[str]] = frozenset(
    {
        "overpayment.verify",
        "overpayment.reject",
        "overpayment.resolve",
        "refund.retry",
        "escrow.release",
        "schedule.fire",
        "dispute.open",
        "dispute.assign",
        "dispute.log",
        "dispute.plan",
        "dispute.defer",
        "dispute.escalate",
        "dispute.adjust",
        "dispute.resolve",
        "dispute.feedback",
    }
)

AUTHORITY_ACTIONS: Final[dict[str, str]] = {
    "overpayment.verify": "verify",
    "overpayment.reject": "verify",
    "overpayment.resolve": "resolve",
    "refund.retry": "resolve",
    "escrow.release": "release",
    "dispute.adjust": "adjust",
    "dispute.plan": "plan",
}
"""The authority-table action each staff command needs (the scheduler's firings need none)."""

_ADAPTER: Final[TypeAdapter[StaffCommand]] = TypeAdapter(StaffCommand)


def parse_command(raw: bytes | None) -> StaffCommand:
    """Parse one `ledger.commands` message value, or raise InboundRejected saying why not."""
    return parse_message(raw, _ADAPTER, COMMAND_TYPES)


def firing_command_id(item: str, item_id: str, due_at: str, attempt: int | None) -> str:
    """A firing's command id: derived from the item and its due time or attempt, so the same
    firing published twice counts once, and retry 2 is not a duplicate of retry 1."""
    name = f"{item}\x1f{item_id}\x1f{due_at}\x1f{attempt or 0}"
    return str(uuid.uuid5(_FIRING_NAMESPACE, name))


_FIRING_NAMESPACE: Final = uuid.UUID("2b7d3f0e-61a4-4a8e-9a57-0c1f8d9e4b21")

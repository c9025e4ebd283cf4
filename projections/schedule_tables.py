"""The scheduler's read model's name and tables: what its due-items query needs."""

from __future__ import annotations

from typing import Final

NAME: Final = "schedule"

ITEMS: Final = "rm_schedule"
"""One row per timed item of an overpayment, a dispute or a follow-up: its kind, the id a firing
names, the account, the due time, the attempt (refund retries; an installment's number), and
whether it is done."""
INSTALLMENTS: Final = "rm_schedule_installments"
"""What is left to pay of each installment (keyed as its item): it is done once nothing is."""
DORMANCY: Final = "rm_dormancy"
"""One row per account: jurisdiction, last customer activity, credit owed, escheatments so far.
Its due time depends on the policy's dormancy period, so the scheduler computes it."""
TABLES: Final = (ITEMS, DORMANCY, INSTALLMENTS)
ITEMS_DUE_INDEX: Final = "rm_schedule_due"
DORMANCY_DUE_INDEX: Final = "rm_dormancy_due"

ESCROW_EXPIRY: Final = "escrow_expiry"
REFUND_RETRY: Final = "refund_retry"
SELF_CORRECTION: Final = "self_correction"
FOLLOW_UP: Final = "follow_up"
DORMANCY_ITEM: Final = "dormancy"
DISPUTE_UPDATE: Final = "dispute_update"
INSTALLMENT_DUE: Final = "installment_due"
DEFERRAL_END: Final = "deferral_end"

"""A staff command's id: any UUID text is taken, and kept in its canonical form."""

from __future__ import annotations

import orjson
import pytest

from ledger.schemas.commands import parse_command
from ledger.schemas.inbound import InboundRejected

CANONICAL = "62380858-e71b-51be-829e-60043380f852"


def _firing(command_id: str) -> bytes:
    return orjson.dumps(
        {
            "command_id": command_id,
            "type": "schedule.fire",
            "account_id": "ACC-1",
            "actor": {"id": "scheduler", "role": "scheduler"},
            "issued_at": "2027-03-01T14:04:44+00:00",
            "item": "escrow_expiry",
            "item_id": "ACC-1:op:3",
            "due_at": "2027-03-01T14:04:44+00:00",
        }
    )


@pytest.mark.parametrize(
    "written",
    [
        CANONICAL,
        CANONICAL.upper(),
        "{" + CANONICAL + "}",
        CANONICAL.replace("-", ""),
        "urn:uuid:" + CANONICAL,
    ],
)
def test_a_command_id_is_kept_in_canonical_form(written: str) -> None:
    assert parse_command(_firing(written)).command_id == CANONICAL


@pytest.mark.parametrize("written", ["not-a-uuid", CANONICAL[:-1], CANONICAL + "0"])
def test_a_command_id_that_is_no_uuid_is_a_contract_error(written: str) -> None:
    with pytest.raises(InboundRejected) as refused:
        parse_command(_firing(written))
    assert refused.value.kind == "contract"
    assert "command_id must be a UUID" in refused.value.reason

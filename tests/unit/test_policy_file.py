"""Loading the policy file: the shipped one loads; any problem is one line naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger import limits
from ledger.domain.policy import Policy, PolicyError
from ledger.policy_file import load_policy

SHIPPED = Path(__file__).parents[2] / "src" / "ledger" / "policy" / "default.toml"


def refusal(text: str, tmp_path: Path) -> str:
    """The PolicyError's message for a file holding `text`."""
    path = tmp_path / "policy.toml"
    path.write_text(text, "utf-8")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_the_shipped_default_loads_and_its_sections_are_the_code_defaults() -> None:
    shipped = load_policy()
    assert shipped.version == "2026-12-01"
    assert shipped == Policy(version=shipped.version)
    assert load_policy(SHIPPED) == shipped


def test_a_file_with_only_a_version_takes_the_shipped_sections(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('version = "site-1"\n[escrow]\nperiod = "P30D"\n', "utf-8")
    policy = load_policy(path)
    assert policy.version == "site-1"
    assert policy.escrow.period.days == 30
    assert policy.authority == load_policy().authority


def test_a_bad_key_names_the_file_and_the_key_path(tmp_path: Path) -> None:
    text = SHIPPED.read_text("utf-8").replace("verify = 0\n", "verify = -1\n", 1)
    path = tmp_path / "policy.toml"
    assert refusal(text, tmp_path) == (
        f"policy {path}: authority.agent.verify: Input should be greater than or equal to 0"
    )


def test_a_rule_between_keys_drops_pydantics_prefix(tmp_path: Path) -> None:
    text = SHIPPED.read_text("utf-8").replace('default = "refund"', 'default = "gift"')
    assert refusal(text, tmp_path).endswith(
        "resolutions.retail.default: Input should be 'credit', 'refund', 'escrow', 'coupon',"
        " 'store_credit' or 'cancel_and_refund'"
    )
    text = SHIPPED.read_text("utf-8").replace('period = "P90D"', 'period = "P0D"')
    assert refusal(text, tmp_path).endswith("escrow.period: should be a positive duration")


def test_a_bad_table_key_is_named_as_a_key(tmp_path: Path) -> None:
    text = SHIPPED.read_text("utf-8").replace("EUR = 500", "eur = 500")
    assert refusal(text, tmp_path).endswith(
        "overpayment.small_credit_minor.eur: key should be 3 upper-case letters (ISO 4217)"
        " or 'default'"
    )


def test_several_problems_make_one_line_and_are_bounded(tmp_path: Path) -> None:
    message = refusal('version = ""\n[authority.agent]\nverify = -1\n', tmp_path)
    assert "version: String should have at least 1 character; " in message
    assert "authority.agent.verify: Input should be greater than or equal to 0; " in message
    assert message.count("; ") == limits.policy_errors_shown_max
    assert message.endswith("more")


def test_a_toml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    message = refusal('version = "x"\n\n[escrow\nperiod = "P1D"\n', tmp_path)
    assert message.startswith(f"policy {tmp_path / 'policy.toml'}: not valid TOML: ")
    assert "line 3" in message


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path / "nope.toml")
    assert str(caught.value) == f"policy {tmp_path / 'nope.toml'}: no such file"


def test_a_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"is a directory, not a file$"):
        load_policy(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_bytes(b'version = "\xff"\n')
    with pytest.raises(PolicyError, match="not UTF-8 text"):
        load_policy(path)

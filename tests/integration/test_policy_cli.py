"""`ledger policy show` and `ledger policy check`, and a bad policy refused by `ledger run`.

Each command runs as its own `ledger` process (its exit code and stderr are the contract).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from ledger.domain.policy import Policy
from ledger.policy_file import load_policy
from tests.integration.test_cli_errors import assert_one_line, ledger

SHIPPED = Path(__file__).parents[2] / "src" / "ledger" / "policy" / "default.toml"
BAD_KEY = SHIPPED.read_text("utf-8").replace("verify = 0\n", "verify = -1\n", 1)


@pytest.fixture
def bad_key(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(BAD_KEY, "utf-8")
    return path


def test_show_json_is_the_shipped_policy_in_the_files_shape() -> None:
    result, _ = ledger(["policy", "show", "--json"])
    assert result.returncode == 0, result.stderr
    document = orjson.loads(result.stdout)
    assert document.pop("source") == "default"
    assert document["refunds"]["retry_backoff"] == ["PT1H", "PT6H", "P1D"]
    assert document["escheatment"]["dormancy"]["US-DE"] == "P1825D"
    assert Policy.model_validate(document) == load_policy()


def test_show_the_policy_named_by_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text('version = "site-7"\n[escrow]\nperiod = "P45D"\n', "utf-8")
    result, _ = ledger(["policy", "show", "--json"], LEDGER_POLICY=str(path))
    assert result.returncode == 0, result.stderr
    document = orjson.loads(result.stdout)
    assert (document["source"], document["version"]) == (str(path), "site-7")
    assert document["escrow"]["period"] == "P45D"


def test_show_as_tables() -> None:
    result, _ = ledger(["policy", "show"])
    assert result.returncode == 0, result.stderr
    for words in ("policy 2026-12-01 (default)", "risk_management", "cancel_and_refund", "US-DE"):
        assert words in result.stdout


def test_show_refuses_a_bad_policy_setting(bad_key: Path) -> None:
    result, elapsed_s = ledger(["policy", "show"], LEDGER_POLICY=str(bad_key))
    assert_one_line(result, elapsed_s, f"policy {bad_key}: authority.agent.verify")


def test_check_a_good_file() -> None:
    result, _ = ledger(["policy", "check", str(SHIPPED)])
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"policy {SHIPPED}: valid (version 2026-12-01)\n"


def test_check_a_bad_key(bad_key: Path) -> None:
    result, elapsed_s = ledger(["policy", "check", str(bad_key)])
    line = assert_one_line(result, elapsed_s)
    assert line == (
        f"ledger: policy {bad_key}: authority.agent.verify:"
        " Input should be greater than or equal to 0"
    )


def test_check_bad_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('version = "x"\n[escrow\n', "utf-8")
    result, elapsed_s = ledger(["policy", "check", str(path)])
    assert_one_line(result, elapsed_s, f"policy {path}: not valid TOML", "line 2")


def test_check_a_missing_file(tmp_path: Path) -> None:
    result, elapsed_s = ledger(["policy", "check", str(tmp_path / "nope.toml")])
    line = assert_one_line(result, elapsed_s)
    assert line == f"ledger: policy {tmp_path / 'nope.toml'}: no such file"


def test_run_refuses_a_bad_policy_before_starting_anything(bad_key: Path, tmp_path: Path) -> None:
    database = tmp_path / "ledger.db"
    result, elapsed_s = ledger(
        ["run"], LEDGER_POLICY=str(bad_key), LEDGER_DATABASE_URL=f"sqlite:///{database}"
    )
    assert_one_line(result, elapsed_s, f"policy {bad_key}: authority.agent.verify")
    assert not database.exists()


def test_a_worker_refuses_a_bad_policy(bad_key: Path, tmp_path: Path) -> None:
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("LEDGER_")
    }
    environment.update(
        LEDGER_POLICY=str(bad_key), LEDGER_DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}"
    )
    result = subprocess.run(
        [sys.executable, "-m", "ledger.workers", "relay"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"ledger: policy {bad_key}: authority.agent.verify:"
        " Input should be greater than or equal to 0"
    ]

"""Loading the policy file (the I/O half of `ledger.domain.policy`)."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ledger import limits
from ledger.domain.policy import Policy, PolicyError

DEFAULT_SOURCE = "default"
"""How the shipped policy is named where a path would be (errors, `ledger policy show`)."""


def load_policy(path: Path | None = None) -> Policy:
    """Load and validate the policy file (the shipped default when no path is given).

    Any problem is a PolicyError with one line naming the file and each bad key path.
    """
    source = DEFAULT_SOURCE if path is None else str(path)
    try:
        document = tomllib.loads(_read(path))
        return Policy.model_validate(document)
    except tomllib.TOMLDecodeError as error:
        raise PolicyError(f"policy {source}: not valid TOML: {error}") from error
    except ValidationError as error:
        raise PolicyError(f"policy {source}: {describe_policy_errors(error)}") from error
    except PolicyError as error:
        raise PolicyError(f"policy {source}: {error}") from error


def _read(path: Path | None) -> str:
    """The file's text; a PolicyError (without the file's name) saying why it cannot be read."""
    try:
        if path is None:
            return resources.files("ledger").joinpath("policy/default.toml").read_text("utf-8")
        return path.read_text("utf-8")
    except FileNotFoundError as error:
        raise PolicyError("no such file") from error
    except IsADirectoryError as error:
        raise PolicyError("is a directory, not a file") from error
    except PermissionError as error:
        raise PolicyError("cannot read it: permission denied") from error
    except UnicodeDecodeError as error:
        raise PolicyError(f"not UTF-8 text (byte {error.start})") from error
    except OSError as error:
        raise PolicyError(f"cannot read it: {error.strerror or error}") from error


def describe_policy_errors(error: ValidationError) -> str:
    """One line: each bad key path with pydantic's message, `a.b.c: message; ...`."""
    problems = error.errors()
    shown = [_describe(problem) for problem in problems[: limits.policy_errors_shown_max]]
    if len(problems) > len(shown):
        shown.append(f"and {len(problems) - len(shown)} more")
    return "; ".join(shown)


def _describe(problem: Any) -> str:
    parts = [str(part) for part in problem["loc"]]
    message = str(problem["msg"]).removeprefix("Value error, ")
    if parts and parts[-1] == "[key]":
        # pydantic names a bad key of a table by appending `[key]` to the key itself.
        parts.pop()
        message = f"key {message}"
    return f"{'.'.join(parts) or '(top level)'}: {' '.join(message.split())}"

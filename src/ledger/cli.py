"""Command line entry point (placeholder until the CLI lands)."""


def main() -> None:
    """Run the ledger command line."""

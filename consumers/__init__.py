"""Consumers of the ledger."""

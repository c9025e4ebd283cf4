"""Projections of the ledger."""

"""The overpayment and dispute ledger: domain, application services and entry points."""

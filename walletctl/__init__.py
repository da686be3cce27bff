"""walletctl: a closed-loop wallet kept as a double-entry ledger in PostgreSQL."""

__version__ = "0.1.0"

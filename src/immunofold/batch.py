"""Batch prediction (placeholder until implemented)."""


def add_batch_parser(commands) -> None:
    """Register `immunofold batch` (to be implemented)."""

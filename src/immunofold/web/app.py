"""Local web app (placeholder until implemented)."""


def add_serve_parser(commands) -> None:
    """Register `immunofold serve` (to be implemented)."""

"""Domain names -> indices, with one index for domains outside the configured list."""

from __future__ import annotations

from collections.abc import Sequence

UNSEEN_DOMAIN = -1


def domain_index(name: str, domains: Sequence[str]) -> int:
    """Index of `name` in the configured list, or UNSEEN_DOMAIN."""
    try:
        return list(domains).index(name)
    except ValueError:
        return UNSEEN_DOMAIN

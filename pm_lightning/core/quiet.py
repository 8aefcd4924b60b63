"""Third-party notices a user cannot act on, silenced at the entry points before the libraries load.

Each is matched by its logger and a phrase of its text, so any other message of the same logger still shows.
"""

from __future__ import annotations

import logging

KNOWN = {
    # torch >= 2.9 logs one per Enum that torchao (imported by diffusers) registers with `register_constant`
    "torch.utils._pytree": ("is an Enum subclass and is now natively supported by torch.compile",),
}


class _Known(logging.Filter):
    def __init__(self, phrases: tuple[str, ...]):
        super().__init__()
        self.phrases = phrases

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(p in str(record.msg) for p in self.phrases)


def quiet_known_notices() -> None:
    """Filter the `KNOWN` notices out of their loggers (call before importing torch / diffusers)."""
    for name, phrases in KNOWN.items():
        logging.getLogger(name).addFilter(_Known(phrases))

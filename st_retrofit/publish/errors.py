"""The publish package's error, shared by the release and the MTEB submission."""

from __future__ import annotations


class PublishError(RuntimeError):
    """Publishing cannot go ahead as configured."""

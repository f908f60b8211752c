"""The publish package's error, shared by the release and the MTEB submission."""

from __future__ import annotations

from st_retrofit.config import StRetrofitError


class PublishError(StRetrofitError, RuntimeError):
    """Publishing cannot go ahead as configured."""

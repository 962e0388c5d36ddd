"""What an outbound fetch may reach and how much it may take: plain values.

The settings build them and :mod:`serve_app.delivery.fetch` obeys them; they live apart
so that reading the settings doesn't import the HTTP client.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FetchLimits", "UrlPolicy"]


@dataclass(frozen=True)
class UrlPolicy:
    allow_private: bool = False
    allowlist: frozenset[str] = frozenset()  # "host:port" exempt from the address check


@dataclass(frozen=True)
class FetchLimits:
    """How much and how slowly a fetch may go before it is abandoned.

    ``read_timeout`` bounds each connect and read; ``deadline`` the whole transfer,
    redirects included; after ``rate_grace`` seconds the average rate since the start
    must stay at or above ``min_rate`` bytes/s, so a server that trickles a byte now
    and then cannot hold a job (and its slot) until the deadline.
    """

    max_bytes: int
    read_timeout: float = 30.0
    deadline: float = 3600.0
    min_rate: float = 64 * 1024
    rate_grace: float = 10.0

"""Every FLOW-DC exception, in one place.

Exception
├── FlowDCError          bad input, or a state the user must resolve: one line, never a
│   │                    traceback (the CLI prints it and exits 2)
│   └── Interrupted      the user stopped the run (Ctrl-C); committed shards are kept (exit 130)
├── ShardRejected        a shard a worker sent back failed the manager's checks: nothing of it
│                        is committed, it runs again elsewhere (storage/verify.py)
└── RowFailure           one row did not become a sample; its `status` and `message` go to
    │                    the row's results (never shown as an error of the run)
    ├── FetchFailure     an attempt to download failed; `retryable` says whether another
    │                    attempt may help, the other flags what the host's limits learn
    └── ImageRejected    the body is no acceptable image (not an image, too large, too
                         small, bad aspect ratio, hash mismatch, ...)
"""

from __future__ import annotations


class FlowDCError(Exception):
    """Bad input or a state the user must resolve; shown as one line, never as a traceback."""


class Interrupted(FlowDCError):
    """The user stopped the run (Ctrl-C); committed shards are kept."""


class ShardRejected(Exception):
    """A shard built by a worker and sent back does not match the plan; the message says how."""


class RowFailure(Exception):
    """Why one row has no sample: its results status and a one-line message."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class FetchFailure(RowFailure):
    """One download attempt failed."""

    def __init__(
        self,
        status: str,
        message: str,
        retryable: bool,
        http_status: int | None = None,
        retry_after: float | None = None,
        *,
        timed_out: bool = False,
        unreachable: bool = False,
        unresolved: bool = False,
        malformed: bool = False,
        no_connection: bool = False,
    ) -> None:
        super().__init__(status, message)
        self.retryable = retryable
        self.http_status = http_status
        self.retry_after = retry_after
        self.latency: float | None = None
        """Seconds to the response headers, when there was a response."""
        self.timed_out = timed_out
        self.unreachable = unreachable
        """No connection or no answer: what the host's circuit breaker counts."""
        self.unresolved = unresolved
        """The host name did not resolve."""
        self.malformed = malformed
        """The answer was no valid HTTP: the same server likely answers so again."""
        self.no_connection = no_connection
        """No connection was made (refused, or no answer to the SYN within the connect timeout)."""


class ImageRejected(RowFailure):
    """The body is no image this run keeps."""

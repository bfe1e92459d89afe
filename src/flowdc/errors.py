"""Errors a user can act on: each carries a one-line message naming the problem and the fix."""


class FlowDCError(Exception):
    """Bad input or a state the user must resolve; shown as one line, never as a traceback."""

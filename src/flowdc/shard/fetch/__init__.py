"""Fetching URLs: the HTTP client and its per-host rate limits."""

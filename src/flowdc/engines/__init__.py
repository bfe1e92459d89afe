"""Engines decide where run_shard runs; they hold no download logic."""

"""The work of one shard: fetch its URLs (fetch/), check and process each body (processing.py),
write samples (writers/), and commit (run.py: `run_shard`, the same under every engine)."""

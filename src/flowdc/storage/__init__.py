"""Where an output lives: a local folder guarded and locked (output.py), or object storage
through fsspec with shards staged locally and uploaded in commit order (remote.py)."""

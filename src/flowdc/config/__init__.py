"""Configuration: every option of a run (options.py), where a manager listens (listen.py), the
options' groups in `--help` (groups.py), config files and overrides into one model (loading.py)."""

from flowdc.config.loading import build_config, read_config_file
from flowdc.config.options import DownloadConfig

__all__ = ["DownloadConfig", "build_config", "read_config_file"]

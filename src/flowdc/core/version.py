"""FLOW-DC's version: in user agents, stats markers, overview.json and croissant.json."""

__version__ = "0.1.0"

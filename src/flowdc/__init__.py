"""FLOW-DC: turn tables of image URLs and labels into ML-ready image datasets."""

__version__ = "0.1.0"

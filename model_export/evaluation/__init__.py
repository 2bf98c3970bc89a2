"""Held-out evaluation: segmentation overlap, per-level findings, paired tests (``lumbar-ai evaluate``)."""

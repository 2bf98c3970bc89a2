"""Supervised training of the text-guided model and its baselines (``lumbar-ai train``)."""

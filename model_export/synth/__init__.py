"""Synthetic lumbar MRI studies with ground truth (numpy and SimpleITK only; no torch)."""

"""Lumbar spine MRI AI service: DICOM in, segmentation and findings out as DICOM SEG, SR and JSON."""

__version__ = "0.1.0"

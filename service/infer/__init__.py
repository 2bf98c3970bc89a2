"""④ infer: ONNX Runtime sessions and the single inference path from DICOM series to label maps."""

"""Model: synthetic data, training, evaluation, pretraining and export to ONNX (needs the [train] extra)."""

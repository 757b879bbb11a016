"""ONNX: the exported graph's format, the exporter, and the engine that runs it."""

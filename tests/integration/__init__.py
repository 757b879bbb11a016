"""The library over tiny random-weight models: compile, check, eval, ONNX, storage."""

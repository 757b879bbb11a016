"""The exported folder's format: its file names and manifest version, and onnxruntime (optional)
loaded with a one-line error when it is missing. (The calibration's manifest shape is
guard.method.calibration's codec, beside the store's.)"""

from __future__ import annotations

from guard.errors import need_extra

FORMAT = "guard-onnx"
FORMAT_VERSION = 1
MANIFEST = "guard-onnx.json"
MODEL_FILE = "model.onnx"
TOKENIZER_DIR = "tokenizer"


def onnxruntime_module():
    need_extra("onnxruntime", "the ONNX engine", "onnx")
    import onnxruntime

    return onnxruntime

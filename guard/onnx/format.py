"""The exported folder's format: its file names and manifest version, and onnxruntime (optional)
loaded with a one-line error when it is missing. (The calibration's manifest shape is
guard.method.calibration's codec, beside the store's.)"""

from __future__ import annotations

from guard.errors import GuardError, need_extra

FORMAT = "guard-onnx"
FORMAT_VERSION = 1
# an export of a windowed policy (its manifest's method has `window`) says version 2, so that a guard
# older than ONNX windows refuses it instead of checking whole texts; this guard reads both
WINDOWED_FORMAT_VERSION = 2
READABLE_VERSIONS = (FORMAT_VERSION, WINDOWED_FORMAT_VERSION)
MANIFEST = "guard-onnx.json"
MODEL_FILE = "model.onnx"
TOKENIZER_DIR = "tokenizer"
# the compiled exemplars' vectors at the selected heads and their texts and labels, for explanations
# (nearest exemplars); exports written before guard 0.3 lack them and check without --explain
EXEMPLAR_VECTORS = "exemplars.npy"
EXEMPLAR_TEXTS = "exemplars.json"
# weights of the graph: float32 as traced, or int8 (onnxruntime's dynamic quantisation of its MatMuls)
WEIGHTS = ("float32", "int8")


def onnxruntime_module():
    need_extra("onnxruntime", "the ONNX engine", "onnx")
    import onnxruntime

    return onnxruntime


def weights_of(quantize: str | None) -> str:
    """The graph's weights for a `--quantize` value (None: float32); a one-line error for any other."""
    if quantize is None:
        return WEIGHTS[0]
    if quantize not in WEIGHTS[1:]:
        raise GuardError(f"--quantize takes {', '.join(WEIGHTS[1:])}, not '{quantize}'")
    return quantize

"""The exported folder's format: its file names and manifest version, the calibration as the manifest
stores it, and onnxruntime (optional) loaded with a one-line error when it is missing."""

from __future__ import annotations

from guard.errors import need_extra
from guard.method.calibration import Calibration, Platt, Threshold

FORMAT = "guard-onnx"
FORMAT_VERSION = 1
MANIFEST = "guard-onnx.json"
MODEL_FILE = "model.onnx"
TOKENIZER_DIR = "tokenizer"


def onnxruntime_module():
    need_extra("onnxruntime", "the ONNX engine", "onnx")
    import onnxruntime

    return onnxruntime


def calibration_to_dict(cal: Calibration | None) -> dict | None:
    if cal is None:
        return None
    return {
        "method": cal.method,
        "uncertain_margin": cal.uncertain_margin,
        "platt": [{"slope": p.slope, "intercept": p.intercept} for p in cal.platt],
        "thresholds": {str(c): t.to_dict() for c, t in cal.thresholds.items()},
    }


def calibration_from_dict(data: dict | None) -> Calibration | None:
    if data is None:
        return None
    return Calibration(
        method=data["method"],
        platt=[Platt(p["slope"], p["intercept"]) for p in data["platt"]],
        thresholds={int(c): Threshold(**t) for c, t in data["thresholds"].items()},
        uncertain_margin=data["uncertain_margin"],
    )

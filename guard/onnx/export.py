"""Export a compiled policy's text path to ONNX, for checking with onnxruntime (guard.onnx.engine).

The graph is the decoder truncated after the deepest selected layer, the selected heads' outputs
at the last real token, and each head's cosine similarity to each label (to its centroid, or to
its nearest prototype when the policy has `prototypes`): the SAV vote's input; the vote,
calibration and thresholds stay in Python, shared with the torch path.

    inputs:  input_ids [batch, tokens] int64, attention_mask [batch, tokens] int64 (right-padded)
    outputs: heads [batch, k, head_dim] float32, similarities [batch, k, labels] float32

Beside it: `guard-onnx.json` (labels, heads, prompt, the classifier's method keys such as `vote`
and `escape`, calibration, policy version, model reference and fingerprint), `tokenizer/` (the
model's tokenizer files, chat template included), since tokenisation stays in Python, and the
compiled exemplars (`exemplars.npy`: their vectors at the selected heads, `exemplars.json`: their
texts and labels), so explanations name the nearest ones. `quantize="int8"` stores the graph with
int8 weights (onnxruntime's dynamic quantisation: the MatMul weights as int8 per output channel,
activations quantised per call). The export uses the TorchScript exporter (`dynamo=False`): it traces
one forward with eager attention, and dead-code elimination drops everything after the last
captured head (the deepest layer's MLP, the final norm, the LM head).

Vision-language models are refused: a check of an image needs the vision encoder, the
processor's expansion of each image placeholder into a per-image number of tokens, the merge of
image features into the text embeddings and, for Qwen2-VL, 3-D rotary positions computed from the
image grid; none of these are in a text-only graph, and a policy compiled on images would be
judged on inputs unlike its exemplars.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from guard.errors import GuardError
from guard.method import calibration, sav
from guard.method.artifact import Artifact
from guard.models import LoadedModel, load_model
from guard.models.architectures import ARCHITECTURES
from guard.models.capture import last_token_index
from guard.onnx.format import (
    EXEMPLAR_TEXTS,
    EXEMPLAR_VECTORS,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    MODEL_FILE,
    TOKENIZER_DIR,
    WINDOWED_FORMAT_VERSION,
    onnxruntime_module,
    weights_of,
)
from guard.policy import fill_prompt, template_fields

OPSET = 17
SAMPLE_TEXT = "How do I keep bread fresh for a week?"  # traces the graph and checks parity on export


class ExportError(GuardError):
    """The policy or its model cannot be exported, or the target folder is unusable."""


class HeadsGraph(nn.Module):
    """What the ONNX graph computes: selected heads' last-token outputs and their similarities."""

    def __init__(self, loaded: LoadedModel, artifact: Artifact):
        super().__init__()
        self.loaded = loaded
        self.model = loaded.model  # registered, so the tracer sees its weights as parameters
        self.heads = [(int(layer), int(head)) for layer, head in artifact.heads]
        self.layers = sorted({layer for layer, _ in self.heads})
        bank, bank_labels = artifact.bank  # the centroids, or the prototypes (the torch path's own)
        self.register_buffer("bank", bank.detach().float().clone())  # [M, k, D]
        self.register_buffer("bank_labels", bank_labels.clone())
        self.num_labels = len(artifact.labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        # Own hooks, not the model's head tap (guard.models.capture): the tap reshapes with the batch size
        # as a Python number, which a trace would freeze, and stops the forward with an exception,
        # which a trace cannot follow. The hooks ignore forwards from other threads.
        layout, owner = self.loaded.layout, threading.get_ident()
        taken: dict[int, torch.Tensor] = {}

        def reader(layer: int):
            def hook(module, args):
                if threading.get_ident() == owner:
                    taken[layer] = args[0]

            return hook

        handles = [self.loaded.o_projs[layer].register_forward_pre_hook(reader(layer)) for layer in self.layers]
        try:
            with _truncated(self.loaded, max(self.layers) + 1):
                _decoder(self.loaded)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        rows, last = torch.arange(input_ids.shape[0]), last_token_index(attention_mask)
        per_layer = {
            layer: taken[layer][rows, last].reshape(-1, layout.num_heads, layout.head_dim) for layer in self.layers
        }
        selected = torch.stack([per_layer[layer][:, head] for layer, head in self.heads], dim=1)  # [B, k, D]
        return selected, sav.bank_similarities(selected, self.bank, self.bank_labels, self.num_labels)


def _decoder(loaded: LoadedModel) -> nn.Module:
    """The module that owns the decoder layers (a text model's `model.model`)."""
    parent = loaded.model
    for part in loaded.arch.layers.split(".")[:-1]:
        parent = getattr(parent, part)
    return parent


@contextmanager
def _truncated(loaded: LoadedModel, layers: int):
    """Run only the first `layers` decoder layers (transformers iterates config.num_hidden_layers)."""
    config = _decoder(loaded).config
    before = config.num_hidden_layers
    config.num_hidden_layers = layers
    try:
        yield
    finally:
        config.num_hidden_layers = before


@contextmanager
def _eager_attention(loaded: LoadedModel):
    """Eager attention traces into plain ONNX ops (softmax of masked scores)."""
    configs = {id(m.config): m.config for m in loaded.model.modules() if hasattr(m, "config")}
    before = {key: getattr(c, "_attn_implementation", None) for key, c in configs.items()}
    for config in configs.values():
        config._attn_implementation = "eager"
    try:
        yield
    finally:
        for key, config in configs.items():
            config._attn_implementation = before[key]


@dataclass
class ExportReport:
    policy: str
    directory: Path
    onnx_bytes: int
    layers: int  # decoder layers in the graph (deepest selected layer + 1)
    max_similarity_error: float  # |onnxruntime - torch| on the sample input, largest head similarity gap
    seconds: float
    weights: str = "float32"  # or "int8" (quantised)

    def to_dict(self) -> dict:
        return {
            "policy": self.policy,
            "directory": str(self.directory),
            "onnx_bytes": self.onnx_bytes,
            "layers": self.layers,
            "weights": self.weights,
            "max_similarity_error": self.max_similarity_error,
            "seconds": round(self.seconds, 2),
        }


def manifest(artifact: Artifact, loaded: LoadedModel, weights: str = "float32") -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION if artifact.window is None else WINDOWED_FORMAT_VERSION,
        "policy": artifact.name,
        "version": artifact.version,
        "description": artifact.description,
        "prompt": artifact.prompt,
        "method": artifact.method,  # vote, escape, prototypes...: read back by the engine
        "labels": [lab.stored() for lab in artifact.labels],
        "heads": [[layer, head] for layer, head in artifact.heads],
        "scoring": artifact.scoring,
        "calibration": calibration.to_manifest(artifact.calibration),
        "model": {
            "reference": artifact.model_reference,
            "fingerprint": artifact.model_fingerprint,
            "model_type": loaded.info.get("model_type"),
            "layers_in_graph": max(layer for layer, _ in artifact.heads) + 1,
            "num_heads": loaded.layout.num_heads,
            "head_dim": loaded.layout.head_dim,
        },
        "tokenizer": TOKENIZER_DIR,
        "chat_template": bool(getattr(loaded.tokenizer, "chat_template", None)),
        "exemplars": {"vectors": EXEMPLAR_VECTORS, "texts": EXEMPLAR_TEXTS, "count": len(artifact.exemplar_texts)},
        "onnx": {
            "file": MODEL_FILE,
            "opset": OPSET,
            "weights": weights,
            "inputs": {"input_ids": "[batch, tokens] int64", "attention_mask": "[batch, tokens] int64, right-padded"},
            "outputs": {"heads": "[batch, k, head_dim] float32", "similarities": "[batch, k, labels] float32"},
        },
    }


def export_onnx(
    artifact: Artifact,
    directory: str | Path,
    *,
    loaded: LoadedModel | None = None,
    check: bool = True,
    quantize: str | None = None,
) -> ExportReport:
    """Write `directory` (created, or replaced if it holds an earlier export) with the ONNX graph,
    its manifest, the tokenizer and the exemplars. The model is loaded on CPU in float32 unless
    `loaded` is given (which must be on CPU in float32 too). `quantize="int8"` stores int8 weights.
    With `check`, onnxruntime runs the (final) graph once and the gap to torch is reported."""
    # long: one sequence of checks before the trace, then the staged write; each step is a call
    started = time.perf_counter()
    weights = weights_of(quantize)
    target = Path(directory)
    _check_target(target)
    known = ARCHITECTURES.get(str(artifact.model_info.get("model_type")))
    if known is not None and known.multimodal:  # refused before loading (possibly 7B of) weights
        raise ExportError(_VLM_REFUSAL.format(name=artifact.name, model_type=artifact.model_info.get("model_type")))
    loaded = loaded or load_model(artifact.model_reference, device="cpu", dtype="float32")
    if loaded.arch.multimodal:
        raise ExportError(_VLM_REFUSAL.format(name=artifact.name, model_type=loaded.info.get("model_type")))
    if loaded.fingerprint != artifact.model_fingerprint:
        raise ExportError(
            f"policy '{artifact.name}' was compiled on a different model than '{loaded.source.reference}'; "
            "recompile it or export with the model it was compiled on"
        )
    if loaded.device.type != "cpu" or loaded.dtype != torch.float32:
        raise ExportError("the ONNX export traces the model on CPU in float32 (load it with device='cpu')")
    if check or weights != "float32":
        onnxruntime_module()  # fail before the trace, not after it
    graph = HeadsGraph(loaded, artifact).eval()
    sample_prompt = fill_prompt(
        artifact.prompt, dict.fromkeys(template_fields(artifact.prompt), SAMPLE_TEXT), artifact.escape
    )
    sample = loaded.encode([loaded.prepare(sample_prompt)])
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        if weights == "int8":
            _trace(graph, sample, staging / _TRACED)
            _quantize_int8(staging / _TRACED, staging / MODEL_FILE)
        else:
            _trace(graph, sample, staging / MODEL_FILE)
        loaded.tokenizer.save_pretrained(staging / TOKENIZER_DIR)
        _write_exemplars(artifact, staging)
        (staging / MANIFEST).write_text(json.dumps(manifest(artifact, loaded, weights), indent=2) + "\n")
        error = _parity_on_sample(graph, sample, staging / MODEL_FILE) if check else float("nan")
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700: give it the mode a plain mkdir would
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)  # the folder appears whole or not at all
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportReport(
        policy=artifact.name,
        directory=target,
        onnx_bytes=(target / MODEL_FILE).stat().st_size,
        layers=max(graph.layers) + 1,
        max_similarity_error=error,
        seconds=time.perf_counter() - started,
        weights=weights,
    )


_VLM_REFUSAL = (
    "policy '{name}' runs on a vision-language model ({model_type}); the ONNX export covers text models: "
    "checking an image needs the vision encoder, the processor's per-image token expansion and the merge of "
    "image features into the text (and Qwen2-VL's image-grid positions) in the graph, which guard does not export"
)


def _check_target(target: Path) -> None:
    if target.is_file():
        raise ExportError(f"'{target}' is a file; give a folder for the ONNX export")
    if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST).is_file():
        raise ExportError(f"'{target}' is a non-empty folder that holds no guard ONNX export; refusing to replace it")


def _trace(graph: HeadsGraph, sample: dict[str, torch.Tensor], path: Path) -> None:
    import warnings

    args = (sample["input_ids"], sample["attention_mask"])
    with _eager_attention(graph.loaded), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(
            graph,
            args,
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["heads", "similarities"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "tokens"},
                "attention_mask": {0: "batch", 1: "tokens"},
                "heads": {0: "batch"},
                "similarities": {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
        )


_TRACED = "model-float32.onnx"  # the traced graph before quantisation, removed from the staging folder
# MatMuls left in float32 by the int8 export: the MLP's output projection reads the MLP's hidden
# activations, whose rare huge values (SmolLM2's "massive activations") make one per-tensor int8
# scale too coarse for the rest; quantising them too cut the default policy's agreement with
# torch from 97-98% to about 70% of verdicts on fit-side texts (BENCHMARKS.md, "int8 export")
FLOAT_MATMULS = ("/mlp/down_proj/",)


def _quantize_int8(traced: Path, out: Path) -> None:
    """onnxruntime's dynamic quantisation: the weights of the linear layers' MatMuls (those with a
    constant right-hand side) as signed int8, one scale per output channel, activations quantised
    per call; the MLP output projections stay float32 (FLOAT_MATMULS). Attention's own MatMuls
    (scores, weighted values) multiply two activations and stay float32 too."""
    import logging

    import onnx

    onnxruntime_module()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(traced), load_external_data=False).graph
    constants = {init.name for init in graph.initializer}
    chosen = [
        node.name
        for node in graph.node
        if node.op_type == "MatMul"
        and node.input[1] in constants
        and not any(part in node.name for part in FLOAT_MATMULS)
    ]
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs advice to pre-process the graph on the root logger
    try:
        quantize_dynamic(
            traced,
            out,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=chosen,
        )
    finally:
        root.setLevel(before)
    traced.unlink()


def _write_exemplars(artifact: Artifact, folder: Path) -> None:
    """The compiled exemplars for explanations: vectors `[N, k, head_dim]` float32 as .npy (read
    back without pickle), texts and label names as JSON."""
    vectors = artifact.exemplar_vectors.detach().float().cpu().numpy()
    np.save(folder / EXEMPLAR_VECTORS, np.ascontiguousarray(vectors), allow_pickle=False)
    names = artifact.label_names
    body = {"texts": list(artifact.exemplar_texts), "labels": [names[i] for i in artifact.exemplar_labels]}
    (folder / EXEMPLAR_TEXTS).write_text(json.dumps(body, ensure_ascii=False) + "\n", encoding="utf-8")


def _parity_on_sample(graph: HeadsGraph, sample: dict[str, torch.Tensor], path: Path) -> float:
    """Largest |similarity| gap between onnxruntime and torch on the sample input."""

    onnxruntime = onnxruntime_module()

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": sample["input_ids"].numpy(), "attention_mask": sample["attention_mask"].numpy()}
    _, sims = session.run(None, feeds)
    with torch.inference_mode():
        _, expected = graph(sample["input_ids"], sample["attention_mask"])
    return float((torch.from_numpy(sims) - expected).abs().max())


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask

"""Check texts with an exported policy (guard.onnx.export) on onnxruntime, without the torch model.

The folder holds the graph, its manifest and the tokenizer. Rendering (prompt template, chat
template), limit checks, tokenisation and batching are the torch path's own code
(guard.check.prepared, guard.models.inputs.TextInputs, guard.models.batching): right padding, no
added special tokens when a chat template is used, field values escaped as the policy says; the
graph gives each selected head's similarity to each label (centroid or nearest prototype), and the
vote, calibration and thresholds are the torch path's own code too
(`PolicyHeads.verdicts_from_similarities`), so the same similarities give the same verdict. With
`explain`, the nearest exemplars come from the vectors the export stores beside the graph, searched
by the torch path's own code (guard.check.explain).

`open_export` is how `guard check`, `guard scan` and `guard serve` open this engine (`--engine onnx
--onnx DIR`, chosen by guard.onnx.choice), so the three refuse the same things the same way.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from guard.check.conversation import (
    PreparedConversation,
    check_mixed,
    is_conversation,
    prepare_conversation,
    with_context,
)
from guard.check.documents import check_with_documents
from guard.check.engine import CheckResult, PolicyHeads, Verdict, check_inputs, window_rows, windowed_verdicts
from guard.check.prepared import Prepared, prepare_input, prepare_windows, render_prompt
from guard.errors import GuardError, first_line
from guard.limits import check_document_fields, is_document
from guard.method import calibration
from guard.method.artifact import Artifact
from guard.models.batching import TOKEN_BUDGET, Batching
from guard.models.inputs import TextInputs, Tokenized
from guard.models.offsets import iter_token_spans, tokenizer_offsets
from guard.onnx.format import FORMAT, MANIFEST, READABLE_VERSIONS, WINDOWED_FORMAT_VERSION, onnxruntime_module
from guard.policy import Label


class OnnxGuard:
    """An exported policy on onnxruntime: `check` / `check_batch` give Verdicts, as `Guard`, for
    text inputs; `prepare` / `check_prepared` are the Engine protocol (guard.check.protocol)."""

    def __init__(self, directory: Path, manifest: dict, session, tokenizer):
        self.directory = directory
        self.manifest = manifest
        self.session = session
        self.tokenizer = tokenizer
        self.artifact = _artifact(manifest, directory)
        self._heads = PolicyHeads(self.artifact)
        self._group = (self.artifact.prompt, self.artifact.escape)
        # rendering and tokenising are the torch path's own (guard.models.inputs.TextInputs)
        self._inputs = _Locked(TextInputs(tokenizer, "cpu", f"the ONNX export of '{self.artifact.name}'"))

    @classmethod
    def load(cls, directory: str | Path, *, threads: int | None = None) -> OnnxGuard:
        """Open an export folder written by `guard export NAME --onnx DIR` (threads: onnxruntime's
        intra-op threads; None lets it choose)."""
        directory = Path(directory)
        path = directory / MANIFEST
        if not path.is_file():
            raise GuardError(
                f"'{directory}' holds no ONNX export ({MANIFEST} missing); run 'guard export NAME --onnx DIR'"
            )
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise GuardError(f"{path}: not a readable export manifest ({exc})") from None
        if manifest.get("format") != FORMAT or manifest.get("format_version") not in READABLE_VERSIONS:
            raise GuardError(
                f"{path}: export format {manifest.get('format')} v{manifest.get('format_version')} is not "
                f"{FORMAT} v1-v{WINDOWED_FORMAT_VERSION}; export the policy again with this guard"
            )
        ort = onnxruntime_module()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        model_file = directory / manifest["onnx"]["file"]
        try:
            session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise GuardError(f"cannot open {model_file}: {first_line(exc)}") from None
        return cls(directory, manifest, session, _tokenizer(directory / manifest["tokenizer"]))

    @classmethod
    def from_guard(
        cls, guard, directory: str | Path, *, quantize: str | None = None, threads: int | None = None
    ) -> OnnxGuard:
        """Export a loaded `Guard`'s policy into `directory` (guard.onnx.export, reusing its model
        when it is on CPU in float32) and open the export: the library's way from torch to ONNX."""
        from guard.onnx.export import export_onnx

        loaded = guard.loaded if guard.loaded.device.type == "cpu" and guard.loaded.dtype == torch.float32 else None
        report = export_onnx(guard.artifact, directory, loaded=loaded, quantize=quantize)
        return cls.load(report.directory, threads=threads)

    @property
    def weights(self) -> str:
        """float32, or int8 for a quantised export."""
        return self.manifest["onnx"].get("weights", "float32")

    @property
    def name(self) -> str:
        return self.artifact.name

    # --- the Engine protocol --------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [self.artifact.name]

    @property
    def artifacts(self) -> list[Artifact]:
        return [self.artifact]

    @property
    def warnings(self) -> list[str]:
        return []

    takes_images = False

    @property
    def model_reference(self) -> str:
        return self.artifact.model_reference

    @property
    def fingerprint(self) -> str:
        return self.artifact.model_fingerprint

    def select(self, names: Sequence[str]) -> OnnxGuard:
        if list(names) != self.names:
            raise GuardError(f"this ONNX export holds policy '{self.name}' only, not {', '.join(names)}")
        return self

    def text_tokens(self, text: str) -> int:
        return self._inputs.token_count(text)

    def token_spans(self, text: str, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
        """The character spans of the tokens of `text[start:end]` alone, lazily (token windows)."""
        return self._inputs.token_spans(text, start, end)

    def prepare(self, fields: dict) -> Prepared:
        """One text input rendered and tokenised once, as the torch path does (guard.check.prepared)."""
        if fields.get("images"):
            raise GuardError("the ONNX engine checks text only; check images with the torch engine")
        if is_conversation(fields):  # each judged turn, prepared by this method (guard.check.conversation)
            return prepare_conversation(self, fields)
        if is_document(fields):  # checked window by window in check_prepared (guard.check.documents)
            return Prepared(check_document_fields(fields), document=True)
        windows = {self._group: [self.artifact.window]} if self.artifact.window else None
        return prepare_input(self._inputs, [self._group], with_context(self, fields), windows=windows)

    def check_prepared(
        self,
        prepared: Sequence[Prepared],
        *,
        batch_size: int = 16,
        token_budget: int | None = TOKEN_BUDGET,
        explain: bool = False,
        progress: bool = False,
    ) -> list[CheckResult]:
        """One CheckResult per prepared input, in order; forwards cut as guard.models.batching says."""
        if explain and "exemplars" not in self.manifest:
            raise GuardError(
                f"{self.directory} was exported without its exemplars, which explanations need; "
                "export the policy again with this guard"
            )
        options = {"batch_size": batch_size, "token_budget": token_budget, "explain": explain, "progress": progress}
        if any(isinstance(p, PreparedConversation) for p in prepared):
            return check_mixed(self, prepared, CheckResult, **options)
        if any(p.document for p in prepared):  # as the torch engine: guard.check.documents
            return check_with_documents(self, prepared, CheckResult, **options)
        rows = [p.rows[self._group] for p in prepared]
        windows = self._window_rows(prepared)  # {(input index, span): row}, for a windowed policy
        verdicts = self._verdicts(
            rows + list(windows.values()), batch_size, token_budget, explain and not self.artifact.window
        )
        if self.artifact.window is not None:
            verdicts = self._windowed(prepared, verdicts, list(windows), explain)
        return [CheckResult({self.name: verdict}) for verdict in verdicts[: len(prepared)]]

    def _verdicts(self, rows: list[Tokenized], batch_size: int, token_budget: int | None, explain: bool) -> list:
        """The policy's verdict of each model input, in forwards cut as guard.models.batching says."""
        rule = Batching(batch_size, token_budget)
        single = rule.token_budget is None and len(rows) <= batch_size
        groups = [list(range(len(rows)))] if single and rows else rule.plan([row.length for row in rows])
        results: list[Verdict | None] = [None] * len(rows)
        for group in groups:
            heads, sims = self.run_tokenized([rows[i] for i in group])
            verdicts = self._heads.verdicts_from_similarities(torch.from_numpy(sims), torch.from_numpy(heads), explain)
            for i, verdict in zip(group, verdicts):
                results[i] = verdict
        return results

    def _window_rows(self, prepared: Sequence[Prepared]) -> dict:
        """A windowed policy's window model inputs by (input index, span), as the torch engine's."""
        if self.artifact.window is None:
            return {}
        settings = [self.artifact.window]
        missing = lambda fields: prepare_windows(self._inputs, self._group, fields, settings)  # noqa: E731
        return window_rows(prepared, self._group, settings, self.token_spans, missing)

    def _windowed(self, prepared: Sequence[Prepared], verdicts: list, keys: list, explain: bool) -> list:
        """Each input's verdict from its whole text's (the first len(prepared) of `verdicts`) and its
        windows' (at `keys`), as the torch engine chooses."""
        n = len(prepared)
        parts = dict(zip(keys, verdicts[n:]))
        return windowed_verdicts(self.artifact, prepared, verdicts[:n], parts, self.token_spans, explain)

    # --- checking -------------------------------------------------------------------------------

    def render(self, text: str | None = None, **fields: str) -> str:
        """The chat-rendered prompt the graph reads, as the torch path renders it."""
        if text is not None:
            fields["text"] = text
        return render_prompt(self._inputs, self._group, fields)  # type: ignore[return-value]

    def run(self, rendered: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """One batch of rendered prompts through the graph: heads `[B, k, head_dim]`, similarities `[B, k, labels]`."""
        return self.run_tokenized([self._inputs.tokenize(r) for r in rendered])

    def run_tokenized(self, rows: Sequence[Tokenized]) -> tuple[np.ndarray, np.ndarray]:
        """One batch of tokenised inputs through the graph, right-padded as the torch path pads."""
        batch = self._inputs.pad(rows)
        feeds = {"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy()}
        heads, sims = self.session.run(["heads", "similarities"], feeds)
        return heads, sims

    def check(self, text: str | None = None, *, explain: bool = False, **fields: str) -> Verdict:
        item = {"text": text, **fields} if text is not None else fields
        return self.check_batch([item], explain=explain)[0]

    def check_batch(
        self, inputs: Sequence[str | dict], batch_size: int = 16, progress: bool = False, explain: bool = False
    ) -> list[Verdict]:
        """Verdicts for texts (or dicts of prompt fields), in input order; length-sorted batches;
        `explain` attaches each verdict's explanation (votes and nearest exemplars), as `Guard`'s."""
        results = check_inputs(self, inputs, batch_size=batch_size, explain=explain, progress=progress)
        return [result[self.name] for result in results]


def open_export(
    onnx_dir: str | Path, policies: Sequence[str] | None = None, *, threads: int | None = None
) -> OnnxGuard:
    """The export in `onnx_dir`, refused unless it is the one policy asked for (None: whatever it holds)."""
    if policies and len(policies) > 1:
        raise GuardError("the ONNX engine checks one exported policy at a time")
    onnx = OnnxGuard.load(onnx_dir, threads=threads)
    if policies and policies[0] != onnx.name:
        raise GuardError(f"{onnx_dir} holds an export of policy '{onnx.name}', not '{policies[0]}'")
    return onnx


class _Locked:
    """TextInputs behind a lock: Hugging Face fast tokenizers are not safe to share between threads."""

    def __init__(self, inputs: TextInputs):
        self.inputs = inputs
        self.lock = threading.Lock()

    def prepare(self, prompt: str, images: Sequence = ()) -> str:
        with self.lock:
            return self.inputs.prepare(prompt, images)

    def tokenize(self, rendered: str) -> Tokenized:
        with self.lock:
            return self.inputs.tokenize(rendered)

    def token_count(self, text: str) -> int:
        with self.lock:
            return self.inputs.token_count(text)

    def token_spans(self, text: str, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
        offsets = tokenizer_offsets(self.inputs.tokenizer)

        def locked(piece: str) -> list[tuple[int, int]]:
            with self.lock:
                return offsets(piece)

        return iter_token_spans(text, locked, start=start, end=end)

    def pad(self, rows: Sequence[Tokenized]):
        return self.inputs.pad(rows)  # reads the pad id only


def _tokenizer(directory: Path):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except Exception as exc:
        raise GuardError(f"cannot load the tokenizer in {directory}: {first_line(exc)}") from None
    tokenizer.padding_side = "right"  # the graph finds the last real token from the mask
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _exemplars(manifest: dict, directory: Path, names: list[str]) -> tuple[torch.Tensor, list[str], list[int]]:
    """The exported exemplars (vectors `[N, k, head_dim]`, texts, label indices); none in an export
    written before they were, or checked against the manifest's heads and labels."""
    files = manifest.get("exemplars")
    if files is None:
        return torch.empty(0), [], []
    try:
        vectors = np.load(directory / files["vectors"], allow_pickle=False)
        body = json.loads((directory / files["texts"]).read_text(encoding="utf-8"))
        labels = [names.index(name) for name in body["labels"]]
    except (OSError, ValueError, KeyError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GuardError(f"{directory}: unreadable exported exemplars ({first_line(exc)})") from None
    if vectors.ndim != 3 or not len(vectors) == len(body["texts"]) == len(labels) or not np.isfinite(vectors).all():
        raise GuardError(f"{directory}: the exported exemplars do not match their texts and labels")
    if len(vectors) and vectors.shape[1] != len(manifest["heads"]):
        raise GuardError(f"{directory}: the exported exemplars do not match the selected heads")
    return torch.from_numpy(vectors.astype(np.float32)), list(body["texts"]), labels


def _artifact(manifest: dict, directory: Path) -> Artifact:
    """What the verdict and explanation code reads of a compiled policy (no centroids or head
    scores: the graph has them)."""
    labels = [
        Label(lab["name"], bool(lab["flagged"]), lab.get("description", ""), openai_category=lab.get("openai_category"))
        for lab in manifest["labels"]
    ]
    heads = [(int(layer), int(head)) for layer, head in manifest["heads"]]
    empty = torch.empty(0)
    vectors, texts, exemplar_labels = _exemplars(manifest, directory, [lab.name for lab in labels])
    return Artifact(
        name=manifest["policy"],
        version=manifest["version"],
        prompt=manifest["prompt"],
        labels=labels,
        model_reference=manifest["model"]["reference"],
        model_fingerprint=manifest["model"]["fingerprint"],
        model_info={"model_type": manifest["model"].get("model_type")},
        scoring=manifest.get("scoring", ""),
        heads=heads,
        head_accuracy=empty,
        head_margin=empty,
        centroids=empty,
        exemplar_vectors=vectors,
        exemplar_texts=texts,
        exemplar_labels=exemplar_labels,
        description=manifest.get("description", ""),
        calibration=calibration.from_manifest(manifest.get("calibration")),
        metrics={"method": manifest.get("method", {})},  # vote, escape: exports before 0.2 had neither
    )

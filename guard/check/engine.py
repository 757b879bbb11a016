"""`Guard`: load a compiled policy and check inputs, with a per-head explanation of each verdict."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch

from guard.check.conversation import (
    PreparedConversation,
    check_mixed,
    is_conversation,
    prepare_conversation,
    with_context,
)
from guard.check.documents import check_with_documents
from guard.check.explain import explain as explain_verdict
from guard.check.prepared import Group, Prepared, as_fields, prepare_input, prepare_windows
from guard.check.windows import Setting, choose, extra_spans, setting_spans
from guard.errors import GuardError, ModelError
from guard.limits import check_document_fields, is_document
from guard.method import calibration, sav
from guard.method.artifact import Artifact
from guard.models import LoadedModel, load_model
from guard.models.batching import TOKEN_BUDGET, Batching
from guard.models.features import features
from guard.models.inputs import Tokenized


@dataclass(kw_only=True)
class HeadVote:
    rank: int  # 1 = the best-ranked selected head (ranks are numbered from 1 everywhere)
    layer: int  # numbered from 0, as in the model
    head: int  # numbered from 0, as in the model
    label: str  # the label this head voted for
    similarity: dict[str, float]  # cosine similarity to each label's centroid (or nearest prototype)

    @property
    def margin(self) -> float:
        """Similarity to the voted label's centroid minus the best other label's."""
        return self.similarity[self.label] - max(v for k, v in self.similarity.items() if k != self.label)

    def to_dict(self) -> dict:
        return {
            "rank": self.rank,
            "layer": self.layer,
            "head": self.head,
            "label": self.label,
            "similarity": round(self.similarity[self.label], 6),
            "similarities": {k: round(v, 6) for k, v in self.similarity.items()},
            "margin": round(self.margin, 6),
        }


@dataclass(kw_only=True)
class Verdict:
    policy: str
    version: str
    label: str
    flagged: bool
    scores: dict[str, float]  # share of the selected heads' votes per label
    votes: list[HeadVote] = field(default_factory=list)
    calibrated: dict[str, float] | None = None  # calibrated probability per label (None: no calibration)
    margin: float = 0.0  # (most votes - second most) / heads
    uncertain: bool = False  # margin below the policy's uncertain_margin, or calibrated P(label) < 0.5
    thresholds: dict[str, float] | None = None  # flagged label -> calibrated P at which it is flagged
    explanation: dict | None = field(default=None, compare=False)  # guard.check.explain.explain, when asked for
    window: dict | None = None  # windowed policies: the part of {text} this verdict is about (guard.check.windows)
    turn: dict | None = None  # conversations: the turn judged, {"index", "role"} (guard.check.conversation)
    turns: list[Verdict] | None = None  # `judge: every_turn`: every judged turn's verdict
    vectors: torch.Tensor | None = field(default=None, repr=False, compare=False)  # [k, head_dim] at the selected heads

    def to_dict(self, votes: bool = True) -> dict:
        """The verdict as JSON-ready data (`guard check --json`, the server); `votes=False`
        leaves out the per-head votes."""
        out = {
            "policy": self.policy,
            "version": self.version,
            "flagged": self.flagged,
            "label": self.label,
            "scores": {k: round(v, 6) for k, v in self.scores.items()},
        }
        if votes:
            out["votes"] = [vote.to_dict() for vote in self.votes]
        out["calibrated"] = None if self.calibrated is None else {k: round(v, 6) for k, v in self.calibrated.items()}
        if self.thresholds is not None:
            out["thresholds"] = {k: round(v, 6) for k, v in self.thresholds.items()}
        out["margin"] = round(self.margin, 6)
        out["uncertain"] = self.uncertain
        if self.window is not None:
            out["window"] = self.window
        if self.turn is not None:
            out["turn"] = self.turn
        if self.turns is not None:
            out["turns"] = [verdict.to_dict(votes=False) for verdict in self.turns]
        if self.explanation is not None:
            out["explanation"] = self.explanation
        return out


class CheckResult(dict):
    """One input's verdicts, `{policy name: Verdict}` in the order the policies were given.
    One shape for one policy and for several."""

    @property
    def flagged(self) -> bool:
        return any(verdict.flagged for verdict in self.values())

    def to_dict(self, votes: bool = True) -> dict:
        return {"flagged": self.flagged, "verdicts": {name: v.to_dict(votes) for name, v in self.items()}}


class PolicyHeads:
    """One compiled policy's selected heads and centroids, turning head outputs into verdicts."""

    def __init__(self, artifact: Artifact):
        self.artifact = artifact
        self.layers = sorted({layer for layer, _ in artifact.heads})
        self.flagged = {label.name for label in artifact.labels if label.flagged}
        # the calibrated P at which each flagged label is flagged, fixed per artifact (None: no
        # calibration, or the vote alone decides); every verdict carries it
        cal = artifact.calibration
        found = (
            {} if cal is None else {lab.name: cal.threshold(c, artifact.vote) for c, lab in enumerate(artifact.labels)}
        )
        self.thresholds = {n: t for n, t in found.items() if n in self.flagged and t is not None} or None

    def verdicts(self, selected: torch.Tensor, explain: bool = False) -> list[Verdict]:
        """Verdicts from the selected heads' outputs `[B, k, head_dim]` (heads in rank order),
        each with its explanation when `explain`."""
        bank, bank_labels = self.artifact.bank  # centroids, or prototypes (policy key `prototypes`)
        sims = sav.bank_similarities(selected, bank, bank_labels, len(self.artifact.labels))  # [B, k, C]
        return self.verdicts_from_similarities(sims, selected, explain)

    def verdicts_from_similarities(
        self, sims: torch.Tensor, selected: torch.Tensor, explain: bool = False
    ) -> list[Verdict]:
        """Verdicts from each selected head's similarity to each label centroid `[B, k, C]`
        (computed here, or by an exported graph: guard.onnx.engine), with the head outputs."""
        art = self.artifact
        names = art.label_names
        winners, votes, counts, values = sav.classify(sims, art.vote)
        shares = (counts.float() / len(art.heads)).tolist()
        sims_list, votes_list, counts_list, values_list = (
            sims.tolist(),
            votes.tolist(),
            counts.tolist(),
            values.tolist(),
        )
        flagged = [label.flagged for label in art.labels]
        results = []
        for b, winner in enumerate(winners.tolist()):
            head_votes = [
                HeadVote(
                    rank=r + 1,
                    layer=layer,
                    head=head,
                    label=names[votes_list[b][r]],
                    similarity=dict(zip(names, sims_list[b][r])),
                )
                for r, (layer, head) in enumerate(art.heads)
            ]
            # calibrated scores, thresholds and the uncertain mark: guard.method.calibration.decide
            decision = calibration.decide(counts_list[b], winner, flagged, art.calibration, values_list[b])
            calibrated = None if decision.calibrated is None else dict(zip(names, decision.calibrated))
            results.append(
                Verdict(
                    policy=art.name,
                    version=art.version,
                    label=names[decision.label],
                    flagged=decision.flagged,
                    scores=dict(zip(names, shares[b])),
                    votes=head_votes,
                    calibrated=calibrated,
                    margin=decision.margin,
                    uncertain=decision.uncertain,
                    thresholds=None if self.thresholds is None else dict(self.thresholds),
                    vectors=selected[b],
                )
            )
            if explain:
                results[-1].explanation = explain_verdict(art, results[-1])
        return results


def check_inputs(
    engine,
    inputs: Sequence[str | dict],
    *,
    batch_size: int = 16,
    token_budget: int | None = TOKEN_BUDGET,
    explain: bool = False,
    progress: bool = False,
) -> list[CheckResult]:
    """Prepare every input of an Engine (guard.check.protocol; the first input that cannot be
    checked raises) and check them together."""
    prepared = [engine.prepare(as_fields(item)) for item in inputs]
    return engine.check_prepared(
        prepared, batch_size=batch_size, token_budget=token_budget, explain=explain, progress=progress
    )


def dtype_warnings(artifacts: Sequence[Artifact], loaded: LoadedModel) -> list[str]:
    """A policy checked in another dtype than it was compiled in can change verdicts (bfloat16
    checks of a float32 policy changed 1 in 90 on SmolLM2): say so."""
    now = str(loaded.dtype).removeprefix("torch.")
    return [
        f"warning: policy '{art.name}' was compiled in {art.dtype} and is checked in {now}; "
        f"verdicts near the boundary can differ (use --dtype {art.dtype})"
        for art in artifacts
        if art.dtype and art.dtype != now
    ]


def window_rows(prepared: Sequence[Prepared], group: Group, settings, token_spans, missing) -> dict:
    """The window model inputs of `settings` (one prompt group's window settings) by (input index,
    span), in input order, for either engine: taken from the prepared inputs, or made by
    `missing(fields)` when another engine prepared an input without them."""
    out = {}
    for i, p in enumerate(prepared):
        found = p.windows.get(group, {})
        spans = extra_spans(str(p.fields.get("text") or ""), settings, token_spans)
        if any(span not in found for span in spans):
            found = missing(p.fields)
        out.update(((i, span), found[span]) for span in spans)
    return out


def windowed_verdicts(artifact, prepared: Sequence[Prepared], whole: list, parts: dict, token_spans, explain: bool):
    """A windowed policy's verdict of each input, for either engine: from its whole text's verdict
    (`whole`, in input order) and its windows' (`parts`, by (input index, span)), as
    guard.check.windows.choose decides; with its explanation when asked for."""
    out = []
    for i, p in enumerate(prepared):
        text = str(p.fields.get("text") or "")
        spans = setting_spans(text, artifact.window, token_spans)
        options = [whole[i], *(parts[(i, span)] for span in spans[1:])]
        verdict = choose(text, spans, options, artifact.aggregate, artifact.flagged_labels)
        out.append(replace(verdict, explanation=explain_verdict(artifact, verdict)) if explain else verdict)
    return out


class GuardSet:
    """Several compiled policies on one model, checked together.

    Policies with the same prompt template share one forward pass per input: it captures the
    union of their layers and stops after the deepest, and each policy reads its own heads from
    that. N categories sharing a prompt cost one forward, not N.
    """

    def __init__(self, artifacts: Sequence[Artifact], loaded: LoadedModel):
        if not artifacts:
            raise GuardError("no policies to check")
        for art in artifacts:
            if loaded.fingerprint != art.model_fingerprint:
                raise ModelError(
                    f"policy '{art.name}' was compiled on a different model "
                    f"(compiled: {art.model_fingerprint[:23]}, now: {loaded.fingerprint[:23]} "
                    f"from '{loaded.source.reference}'); recompile it with 'guard compile'"
                )
        self.loaded = loaded
        self.warnings = dtype_warnings(artifacts, loaded)
        self.policies = [PolicyHeads(art) for art in artifacts]
        self.groups: dict[tuple[str, str], list[PolicyHeads]] = {}  # (prompt template, escape) -> policies
        self.windows: dict[Group, list[Setting]] = {}  # groups with windowed policies -> their settings
        for policy in self.policies:
            group = (policy.artifact.prompt, policy.artifact.escape)
            self.groups.setdefault(group, []).append(policy)
            if policy.artifact.window is not None and policy.artifact.window not in self.windows.get(group, []):
                self.windows.setdefault(group, []).append(policy.artifact.window)

    @classmethod
    def load(
        cls,
        db: str | None = None,
        policies: Sequence[str] | None = None,
        *,
        model: str | LoadedModel | None = None,
        device: str = "auto",
        dtype: str | None = None,
    ) -> GuardSet:
        """Load the named policies (all in the database if None); they must share one model."""
        from guard.store.database import Store  # imported here: checking from an Artifact needs no SQL

        artifacts = Store.open(db).load_artifacts(policies, every=True)
        return cls.with_model(artifacts, model, device=device, dtype=dtype)

    @classmethod
    def with_model(
        cls,
        artifacts: Sequence[Artifact],
        model: str | LoadedModel | None = None,
        *,
        device: str = "auto",
        dtype: str | None = None,
    ) -> GuardSet:
        """Bind already-loaded artifacts to their model (loaded from the stored reference if None)."""
        if not artifacts:
            raise GuardError("the database holds no compiled policy; run 'guard compile POLICY.yaml' first")
        if len({art.model_fingerprint for art in artifacts}) > 1:
            names = ", ".join(art.name for art in artifacts)
            raise GuardError(f"policies {names} were compiled on different models; check them separately")
        if not isinstance(model, LoadedModel):
            model = load_model(model or artifacts[0].model_reference, device=device, dtype=dtype)
        return cls(artifacts, model)

    # --- the Engine protocol (guard.check.protocol) ---------------------------------------------

    @property
    def names(self) -> list[str]:
        return [p.artifact.name for p in self.policies]

    @property
    def artifacts(self) -> list[Artifact]:
        return [p.artifact for p in self.policies]

    @property
    def takes_images(self) -> bool:
        return self.loaded.takes_images

    @property
    def model_reference(self) -> str:
        return self.loaded.source.reference

    @property
    def fingerprint(self) -> str:
        return self.loaded.fingerprint

    @property
    def position_limit(self) -> int | None:
        """The most positions the model reads (None: it does not say)."""
        return getattr(getattr(self.loaded.model, "config", None), "max_position_embeddings", None)

    def text_tokens(self, text: str) -> int:
        return self.loaded.token_count(text)

    def token_spans(self, text: str, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
        """The character spans of the tokens of `text[start:end]` alone, lazily (token windows)."""
        return self.loaded.token_spans(text, start, end)

    def select(self, names: Sequence[str]) -> GuardSet:
        """These policies (a subset, in this order) on the same model."""
        if list(names) == self.names:
            return self
        by_name = {p.artifact.name: p.artifact for p in self.policies}
        return GuardSet([by_name[name] for name in names], self.loaded)

    def prepare(self, fields: dict) -> Prepared:
        """One input ready for `check_prepared`: every prompt group's model input rendered and
        tokenised once (guard.check.prepared), and so is each window of {text} that a windowed
        policy checks (guard.check.windows); a conversation (`messages`) as each judged turn
        (guard.check.conversation); a document as itself, checked window by window later; or
        InputError saying why it cannot be checked."""
        if is_conversation(fields):
            return prepare_conversation(self, fields)
        if is_document(fields):  # checked window by window in check_prepared (guard.check.documents)
            return Prepared(check_document_fields(fields), document=True)
        fields = with_context(self, fields)
        return prepare_input(self.loaded, self.groups, fields, position_limit=self.position_limit, windows=self.windows)

    def check_prepared(
        self,
        prepared: Sequence[Prepared],
        *,
        batch_size: int = 16,
        token_budget: int | None = TOKEN_BUDGET,
        explain: bool = False,
        progress: bool = False,
    ) -> list[CheckResult]:
        """Verdicts of every policy for each prepared input, in input order. Forwards hold at most
        `batch_size` inputs and `token_budget` padded tokens (guard.models.batching).

        A windowed policy's windows (prepared with their input) run in the same forwards as the
        whole texts; its verdict is `guard.check.windows.choose`'s and names its window.

        Safe to call from many threads at once on one GuardSet: no state is shared between calls
        but the model, whose hooks read per-call state (see guard.models.capture)."""
        if any(isinstance(p, PreparedConversation) for p in prepared):  # plain ones come back here
            options = {"batch_size": batch_size, "token_budget": token_budget, "explain": explain, "progress": progress}
            return check_mixed(self, prepared, CheckResult, **options)
        if any(p.document for p in prepared):
            options = {"batch_size": batch_size, "token_budget": token_budget, "explain": explain, "progress": progress}
            return check_with_documents(self, prepared, CheckResult, **options)
        rule = Batching(batch_size, token_budget)
        by_policy: dict[str, list[Verdict]] = {}
        for group_key, group in self.groups.items():
            rows = [p.rows.get(group_key) or self._row(group_key, p.fields) for p in prepared]
            windows = self._window_rows(group_key, prepared)  # {(input index, span): row}
            layers = sorted({layer for policy in group for layer in policy.layers})
            title = "checking" if progress else None
            acts = features(self.loaded, rows + list(windows.values()), layers=layers, batch_size=rule, progress=title)
            for policy in group:
                positions = [layers.index(layer) for layer, _ in policy.artifact.heads]
                selected = acts.z[:, positions, [head for _, head in policy.artifact.heads]]
                if policy.artifact.window is None:
                    by_policy[policy.artifact.name] = policy.verdicts(selected, explain)
                else:
                    by_policy[policy.artifact.name] = self._windowed(policy, prepared, selected, list(windows), explain)
        # keep the caller's policy order in each result
        return [CheckResult((name, by_policy[name][i]) for name in self.names) for i in range(len(prepared))]

    def _row(self, group: Group, fields: dict) -> Tokenized:
        """A prompt group's model input for an input prepared by another engine (another subset)."""
        fields = with_context(self, fields)
        return prepare_input(self.loaded, [group], fields, position_limit=self.position_limit).rows[group]

    def _window_rows(self, group: Group, prepared: Sequence[Prepared]) -> dict[tuple[int, tuple[int, int]], Tokenized]:
        """The window model inputs this set's windowed policies of `group` check, by (input index,
        span), in input order; taken from the prepared inputs (prepared here when another engine
        prepared them without)."""
        settings = self.windows.get(group)
        if not settings:
            return {}
        missing = lambda fields: prepare_windows(self.loaded, group, fields, settings, self.position_limit)  # noqa: E731
        return window_rows(prepared, group, settings, self.loaded.token_spans, missing)

    def _windowed(
        self, policy: PolicyHeads, prepared: Sequence[Prepared], selected: torch.Tensor, keys: list, explain: bool
    ) -> list[Verdict]:
        """A windowed policy's verdicts: `selected` holds its heads' outputs for the whole texts
        (one per prepared input) and then for the windows at `keys` ((input index, span))."""
        n = len(prepared)
        parts = dict(zip(keys, policy.verdicts(selected[n:]))) if keys else {}
        return windowed_verdicts(
            policy.artifact, prepared, policy.verdicts(selected[:n]), parts, self.loaded.token_spans, explain
        )

    # --- checking ------------------------------------------------------------------------------

    def render(
        self, prompt_template: str, text: str | None = None, images: Sequence = (), escape: str = "none", **fields: str
    ):
        """The model input: the filled-in prompt (field values escaped as `escape` says),
        chat-rendered (a string for text models, a ModelInput with the images for vision-language models)."""
        if text is not None:
            fields["text"] = text
        item = {**fields, "images": images} if images else fields
        return prepare_input(self.loaded, [(prompt_template, escape)], item).rows[(prompt_template, escape)].rendered

    def check(
        self, text: str | None = None, *, images: Sequence = (), explain: bool = False, **fields: str
    ) -> CheckResult:
        item = {"text": text, **fields} if text is not None else fields
        return self.check_batch([{**item, "images": images} if images else item], explain=explain)[0]

    def check_batch(
        self,
        inputs: Sequence[str | dict],
        batch_size: int = 16,
        progress: bool = False,
        explain: bool = False,
        *,
        token_budget: int | None = TOKEN_BUDGET,
    ) -> list[CheckResult]:
        """Verdicts of every policy for each input, in input order: `[{policy name: Verdict}]`.
        An input is a text, or a dict of prompt fields with an optional "images" list; each is
        prepared once (the first that cannot be checked raises InputError). `explain` attaches
        each verdict's explanation (votes and closest exemplars). Thread-safe."""
        return check_inputs(
            self, inputs, batch_size=batch_size, token_budget=token_budget, explain=explain, progress=progress
        )


class Guard:
    """A compiled policy bound to its model, ready to check inputs."""

    def __init__(self, artifact: Artifact, loaded: LoadedModel):
        self._set = GuardSet([artifact], loaded)
        self.artifact = artifact
        self.loaded = loaded
        self.warnings = self._set.warnings  # e.g. checked in another dtype than compiled in

    @classmethod
    def load(
        cls,
        db: str | None = None,
        policy: str | None = None,
        *,
        model: str | LoadedModel | None = None,
        device: str = "auto",
        dtype: str | None = None,
    ) -> Guard:
        """Load policy `policy` (optional when the database holds one) and its model.

        `model` overrides the stored model reference (a moved directory, say); it is refused
        unless its weights have the fingerprint the policy was compiled with.
        """
        from guard.store.database import Store

        artifacts = Store.open(db).load_artifacts(None if policy is None else [policy])
        guards = GuardSet.with_model(artifacts, model, device=device, dtype=dtype)
        return cls(guards.policies[0].artifact, guards.loaded)

    @property
    def name(self) -> str:
        return self.artifact.name

    # --- the Engine protocol (guard.check.protocol), as its one-policy GuardSet ------------------

    names = property(lambda self: self._set.names)
    artifacts = property(lambda self: self._set.artifacts)
    takes_images = property(lambda self: self._set.takes_images)
    model_reference = property(lambda self: self._set.model_reference)
    fingerprint = property(lambda self: self._set.fingerprint)

    def text_tokens(self, text: str) -> int:
        return self._set.text_tokens(text)

    def token_spans(self, text: str, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
        return self._set.token_spans(text, start, end)

    def prepare(self, fields: dict) -> Prepared:
        return self._set.prepare(fields)

    def check_prepared(self, prepared: Sequence[Prepared], **options) -> list[CheckResult]:
        return self._set.check_prepared(prepared, **options)

    def select(self, names: Sequence[str]) -> GuardSet:
        return self._set.select(names)

    # --- checking ------------------------------------------------------------------------------

    def render(self, text: str | None = None, images: Sequence = (), **fields: str):
        """The exact model input for these values: the chat-rendered prompt (a string for text
        models, a ModelInput with the images for vision-language models)."""
        return self._set.render(self.artifact.prompt, text, images, self.artifact.escape, **fields)

    def check(self, text: str | None = None, *, images: Sequence = (), explain: bool = False, **fields: str) -> Verdict:
        """Check one input; `text` fills the policy prompt's {text}, other fields their {name};
        `images` (paths, PIL images or GuardImages) go with it, in prompt order. Thread-safe."""
        return self._set.check(text, images=images, explain=explain, **fields)[self.name]

    def check_batch(
        self, inputs: Sequence[str | dict], batch_size: int = 16, progress: bool = False, explain: bool = False
    ) -> list[Verdict]:
        """Check many inputs in length-sorted batches; verdicts come back in input order.
        An input is a text, or a dict of prompt fields with an optional "images" list. Thread-safe."""
        return [result[self.name] for result in self._set.check_batch(inputs, batch_size, progress, explain)]

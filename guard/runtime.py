"""`Guard`: load a compiled policy and check inputs, with a per-head explanation of each verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from guard import sav
from guard.artifact import Artifact
from guard.capture import extract
from guard.errors import GuardError, ModelError
from guard.models import LoadedModel, load_model
from guard.store import Store


@dataclass
class HeadVote:
    layer: int  # numbered from 0
    head: int  # numbered from 0
    label: str  # the label this head voted for
    similarity: dict[str, float]  # cosine similarity to each label's centroid

    def to_dict(self) -> dict:
        return {
            "layer": self.layer,
            "head": self.head,
            "label": self.label,
            "similarity": round(self.similarity[self.label], 6),
            "similarities": {k: round(v, 6) for k, v in self.similarity.items()},
        }


@dataclass
class Verdict:
    policy: str
    version: str
    label: str
    flagged: bool
    scores: dict[str, float]  # share of the selected heads' votes per label
    votes: list[HeadVote] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "policy": self.policy,
            "version": self.version,
            "flagged": self.flagged,
            "label": self.label,
            "scores": {k: round(v, 6) for k, v in self.scores.items()},
            "votes": [vote.to_dict() for vote in self.votes],
        }


class Guard:
    """A compiled policy bound to its model, ready to check inputs."""

    def __init__(self, artifact: Artifact, loaded: LoadedModel):
        if loaded.fingerprint != artifact.model_fingerprint:
            raise ModelError(
                f"policy '{artifact.name}' was compiled on a different model "
                f"(compiled: {artifact.model_fingerprint[:23]}, now: {loaded.fingerprint[:23]} "
                f"from '{loaded.source.reference}'); recompile it with 'guard compile'"
            )
        self.artifact = artifact
        self.loaded = loaded
        heads = artifact.heads
        # Capture only the layers that hold a selected head; the forward stops after the deepest.
        self.layers = sorted({layer for layer, _ in heads})
        self._layer_pos = torch.tensor([self.layers.index(layer) for layer, _ in heads])
        self._head_idx = torch.tensor([head for _, head in heads])

    @classmethod
    def load(
        cls,
        db: str | None = None,
        policy: str | None = None,
        *,
        model: str | LoadedModel | None = None,
        device: str = "auto",
        dtype: str | None = None,
    ) -> "Guard":
        """Load policy `policy` (optional when the database holds one) and its model.

        `model` overrides the stored model reference (a moved directory, say); it is refused
        unless its weights have the fingerprint the policy was compiled with.
        """
        artifact = Store.open(db).load_artifact(policy)
        if not isinstance(model, LoadedModel):
            model = load_model(model or artifact.model_reference, device=device, dtype=dtype)
        return cls(artifact, model)

    @property
    def name(self) -> str:
        return self.artifact.name

    def render(self, text: str | None = None, **fields: str) -> str:
        if text is not None:
            fields["text"] = text
        if "text" in fields and not str(fields["text"]).strip():
            raise GuardError("empty text: nothing to check")
        try:
            prompt = self.artifact.prompt.format_map(fields)
        except KeyError as exc:
            raise GuardError(f"policy '{self.name}' needs a value for {{{exc.args[0]}}}") from None
        return self.loaded.chat(prompt)

    def check(self, text: str | None = None, **fields: str) -> Verdict:
        """Check one input; `text` fills the policy prompt's {text}, other fields their {name}."""
        return self.check_batch([{"text": text, **fields} if text is not None else fields])[0]

    def check_batch(self, inputs: Sequence[str | dict], batch_size: int = 16, progress: bool = False) -> list[Verdict]:
        """Check many inputs in length-bucketed batches; verdicts come back in input order."""
        rendered = [self.render(**item) if isinstance(item, dict) else self.render(item) for item in inputs]
        if not rendered:
            return []
        acts = extract(self.loaded, rendered, self.layers, batch_size, progress="checking" if progress else None)
        return self.verdicts(acts[:, self._layer_pos, self._head_idx])

    def verdicts(self, selected: torch.Tensor) -> list[Verdict]:
        """Verdicts from the selected heads' outputs `[B, k, head_dim]`."""
        art = self.artifact
        names = art.label_names
        sims = sav.head_similarities(selected, art.centroids)  # [B, k, C]
        winners, votes, counts = sav.vote(sims)
        k = len(art.heads)
        flagged = {label.name for label in art.labels if label.flagged}
        results = []
        for b in range(len(selected)):
            label = names[int(winners[b])]
            head_votes = [
                HeadVote(layer, head, names[int(votes[b, r])], dict(zip(names, sims[b, r].tolist())))
                for r, (layer, head) in enumerate(art.heads)
            ]
            scores = {name: counts[b, i].item() / k for i, name in enumerate(names)}
            results.append(Verdict(art.name, art.version, label, label in flagged, scores, head_votes))
        return results

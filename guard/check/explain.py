"""Why a verdict: each selected head's vote, and the exemplars closest to the input at the top heads.

The artifact keeps every exemplar's vector at each selected head, so the closest known examples
are a cosine search over those vectors; no model run, no access to the policy files.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from guard.method import sav


@dataclass
class Neighbour:
    index: int  # exemplar index in the policy's order
    text: str
    label: str
    similarity: float  # cosine between the input and this exemplar at the head

    def to_dict(self) -> dict:
        return {"index": self.index, "text": self.text, "label": self.label, "similarity": round(self.similarity, 6)}


@dataclass
class HeadNeighbours:
    rank: int  # 1 = best-ranked selected head (ranks are numbered from 1 everywhere)
    layer: int
    head: int
    voted: str  # the label this head voted for
    neighbours: list[Neighbour]

    def to_dict(self) -> dict:
        return {
            "rank": self.rank,
            "layer": self.layer,
            "head": self.head,
            "voted": self.voted,
            "exemplars": [n.to_dict() for n in self.neighbours],
        }


def nearest_exemplars(
    art, vectors: torch.Tensor, votes: list[str], top_heads: int = 3, per_head: int = 3
) -> list[HeadNeighbours]:
    """The `per_head` exemplars most similar to the input (`vectors`: [k, head_dim] at the selected
    heads) at each of the `top_heads` best-ranked heads; ties go to the lower exemplar index."""
    out = []
    if len(art.exemplar_texts) == 0:
        return out
    names = art.label_names
    for rank in range(min(top_heads, len(art.heads))):
        sims = sav.cosine(vectors[rank][None].double(), art.exemplar_vectors[:, rank].double())  # [N]
        order = sorted(range(len(sims)), key=lambda i: (-float(sims[i]), i))[:per_head]
        layer, head = art.heads[rank]
        out.append(
            HeadNeighbours(
                rank + 1,
                layer,
                head,
                votes[rank],
                [Neighbour(i, art.exemplar_texts[i], names[art.exemplar_labels[i]], float(sims[i])) for i in order],
            )
        )
    return out


def explain(art, verdict, top_heads: int = 3, per_head: int = 3) -> dict:
    """A JSON-ready explanation: every selected head's vote with its margin, and the closest
    exemplars at the top heads."""
    if verdict.vectors is None:
        raise ValueError("this verdict carries no head vectors to explain")
    heads = nearest_exemplars(art, verdict.vectors, [v.label for v in verdict.votes], top_heads, per_head)
    return {
        "votes": [v.to_dict() for v in verdict.votes],
        "nearest_exemplars": [h.to_dict() for h in heads],
    }

"""Which of the fit's knobs moves the default policy on sources it was not fitted on (issue 20)?

Every variant is scored leave-one-source-out on the fitted side only: each source of
policies/text-harm.yaml's exemplars is held out whole, the variant is fitted on the others, and
the held-out items are judged by the vote's winner (the shipped policy sets no threshold, so this
is `guard check`'s label; the baseline row reproduces `guard eval --leave-one-source-out`'s
346/400 and 31/677 exactly). Variants: the number of heads, the deepest layer, head selection
scored on held-out sources instead of left-out exemplars, the probe's L2 weight, the operating
point (a margin threshold), and more exemplars per source (`--shots`, judged on the same held-out
items as the shipped 40 so the two rows compare like for like).

Head outputs come from the activation cache of a database that has run the policy's exemplars
(`guard compile` or `guard eval` with `--db`); items not in it run through the model once.

Run:  .venv/bin/python -m benchmarks.study_fit_knobs --db /tmp/th.db [--shots 100] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import replace
from pathlib import Path

import torch

from guard.compiler import render_exemplars
from guard.eval import baselines
from guard.eval.sources import exemplar_groups, loso_folds
from guard.method import sav
from guard.method.fit import Classifier, Fit
from guard.models import load_model
from guard.models.features import features
from guard.policy import Policy, load_policy
from guard.store.database import Store

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "policies" / "text-harm.yaml"


def with_shots(shots: int) -> Policy:
    """The shipped policy with `shots` exemplars per label and source instead of 40."""
    text = re.sub(r"shots: 40\b", f"shots: {shots}", POLICY.read_text())
    path = POLICY.with_name(f".study-shots-{shots}.yaml")  # beside it, so its `from:` paths resolve
    path.write_text(text)
    try:
        return load_policy(path)
    finally:
        path.unlink()


def head_outputs(policy: Policy, store: Store, loaded) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(activations `[N, L, H, D]`, labels `[N]`, source of each exemplar)."""
    z = features(loaded, render_exemplars(policy, loaded), store=store, batch_size=16, progress="exemplars").z
    labels = torch.tensor([policy.label_names.index(ex.label) for ex in policy.exemplars])
    return z, labels, exemplar_groups(policy, "source")


def source_scores(acts: torch.Tensor, labels: torch.Tensor, groups: list[str], max_layer: int) -> sav.HeadScores:
    """Each head's nearest-centroid accuracy on every source with that source left out of the
    centroids (the mean of both labels' accuracies), instead of leaving out one exemplar."""
    acts = acts[:, : max_layer + 1]
    correct = torch.zeros(acts.shape[:3])
    for _, fitted, held in loso_folds(groups):
        cents = sav.centroids(acts[fitted], labels[fitted], 2)
        sims = sav.cosine(acts[held][:, None], cents[None])  # [n, C, L, H]
        correct[held] = (sims.argmax(1) == labels[held].view(-1, 1, 1)).float()
    accuracy = sum(correct[labels == c].mean(0) for c in (0, 1)) / 2
    return sav.HeadScores(accuracy=accuracy, margin=torch.zeros_like(accuracy))


def fitter(base: Fit, k: int | None = None, max_layer: int | None = None, decay: float | None = None, by_source=False):
    """A function (acts, labels, groups) -> Classifier for one variant of the shipped fit."""
    fit = replace(base, k=k or base.k, max_layer=max_layer if max_layer is not None else base.max_layer)

    def run(acts, labels, groups):
        if by_source:
            heads = sav.select_heads(source_scores(acts, labels, groups, fit.max_layer), fit.k, fit.max_layer)
        else:
            heads = fit.select(fit.score_heads(acts, labels))
        if decay is None:
            return fit(acts, labels, heads)
        bank = sav.probe_bank(sav.at_heads(acts, heads), labels, decay)
        return Classifier(heads, bank, torch.arange(2), 2, fit.vote)

    return run


def margins(run, acts, labels, groups, judged=None) -> torch.Tensor:
    """Leave-one-source-out margin (flagged label's value minus the other's) of every judged item;
    `judged` = (acts, groups) of the items to judge, default the fitted items themselves."""
    judged_acts, judged_groups = judged or (acts, groups)
    out = torch.empty(len(judged_groups))
    for group in dict.fromkeys(judged_groups):
        held = torch.tensor([g == group for g in judged_groups])
        fitted = torch.tensor([g != group for g in groups])
        clf = run(acts[fitted], labels[fitted], [g for g, f in zip(groups, fitted.tolist()) if f])
        values = clf.classify(judged_acts[held])[3]
        out[held] = (values[:, 0] - values[:, 1]).float()
    return out


def rates(margin: torch.Tensor, labels: torch.Tensor, threshold: float = 0.0) -> dict:
    """Recall and FPR of flagging `margin >= threshold` (label 0 is the flagged one; at 0 this is
    the vote's winner, ties going to the first label as in `guard check`)."""
    flagged = margin >= threshold
    harmful, benign = labels == 0, labels == 1
    recall, fpr = flagged[harmful].float().mean().item(), flagged[benign].float().mean().item()
    return {
        "recall": f"{int(flagged[harmful].sum())}/{int(harmful.sum())}",
        "fpr": f"{int(flagged[benign].sum())}/{int(benign.sum())}",
        "balanced_accuracy": round((recall + 1 - fpr) / 2, 4),
    }


def embedding_row(policy: Policy, labels: torch.Tensor, groups: list[str]) -> dict:
    """The embedding baseline (all-MiniLM-L6-v2 + logistic regression, `guard eval --baseline
    embed`) on the same leave-one-source-out folds, for comparison with every variant."""
    embedded = baselines.embed_texts(baselines.embed_model_dir("embed"), [ex.text for ex in policy.exemplars])
    flagged = torch.zeros(len(labels), dtype=torch.bool)
    for _, fitted, held in loso_folds(groups):
        flagged[held] = baselines.logistic_regression(embedded[fitted], labels[fitted], embedded[held])[0] == 0
    return {"variant": "embedding + LR baseline, same folds", **rates(flagged.float() * 2 - 1, labels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True, help="database whose activation cache holds the exemplars")
    parser.add_argument("--shots", type=int, default=0, help="also fit this many exemplars per label and source")
    parser.add_argument("--json", help="write the rows here too")
    args = parser.parse_args()
    policy = load_policy(POLICY)
    store = Store.open(args.db, create=True)
    loaded = load_model(policy.model, policy.base_dir, device="cpu")
    acts, labels, groups = head_outputs(policy, store, loaded)
    base = Fit.of(policy)
    variants = {"shipped (20 heads, layers <= 16, probe L2 1e-4)": fitter(base)}
    variants |= {f"{k} heads": fitter(base, k=k) for k in (10, 40, 60, 153)}
    variants |= {f"layers <= {m}, {k} heads": fitter(base, k=k, max_layer=m) for m in (12, 29) for k in (20, 40)}
    variants |= {"heads scored on held-out sources": fitter(base, by_source=True)}
    variants |= {f"probe L2 {d:g}": fitter(base, decay=d) for d in (1e-5, 1e-3, 1e-2)}
    rows = [embedding_row(policy, labels, groups)]
    print(rows[-1], flush=True)
    for name, run in variants.items():
        rows.append({"variant": name, **rates(margins(run, acts, labels, groups), labels)})
        print(rows[-1], flush=True)
    shipped = margins(variants[next(iter(variants))], acts, labels, groups)
    for threshold in (-0.004, -0.008, -0.012):
        rows.append({"variant": f"shipped, flagged above margin {threshold}", **rates(shipped, labels, threshold)})
        print(rows[-1], flush=True)
    if args.shots:
        more, more_labels, more_groups = head_outputs(with_shots(args.shots), store, loaded)
        for name, (a, y, g) in {
            "40": (acts, labels, groups),
            str(args.shots): (more, more_labels, more_groups),
        }.items():
            m = margins(fitter(base), a, y, g, judged=(more, more_groups))
            rows.append(
                {"variant": f"{name} per label and source, judged on the {args.shots}", **rates(m, more_labels)}
            )
            print(rows[-1], flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    print("\n| variant | LOSO recall | LOSO FPR | balanced accuracy |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['recall']} | {row['fpr']} | {row['balanced_accuracy']:.3f} |")


if __name__ == "__main__":
    main()

"""SAV math against a plain-loop implementation written independently here."""

import math
import random

import pytest
import torch

from guard.method import sav
from guard.method.fit import Fit

# --- naive reference: python lists and loops only -------------------------------------------


def naive_mean(vectors):
    n = len(vectors)
    return [sum(v[d] for v in vectors) / n for d in range(len(vectors[0]))]


def naive_cos(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / max(na * nb, 1e-8)


def naive_head_score(X, y, C, layer, head, scoring):
    """Accuracy and mean margin of one head, nearest centroid by cosine."""
    correct, margins = 0, []
    for i in range(len(X)):
        sims = []
        for c in range(C):
            members = [X[j][layer][head] for j in range(len(X)) if y[j] == c and (scoring == "in_sample" or j != i)]
            sims.append(naive_cos(X[i][layer][head], naive_mean(members)))
        best = max(range(C), key=lambda c: (sims[c], -c))  # lower label wins ties
        correct += best == y[i]
        margins.append(sims[y[i]] - max(s for c, s in enumerate(sims) if c != y[i]))
    return correct / len(X), sum(margins) / len(margins)


def naive_vote(head_votes, C):
    counts = [head_votes.count(c) for c in range(C)]
    top = max(counts)
    for v in head_votes:  # best-ranked head whose label is among the tied ones
        if counts[v] == top:
            return v


def random_data(seed, n_per_label=5, C=3, L=3, H=4, D=6, quantize=False):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(C).repeat_interleave(n_per_label)
    X = torch.randn(len(y), L, H, D, generator=g, dtype=torch.float64)
    X += 0.8 * y.view(-1, 1, 1, 1).double()  # some label signal
    if quantize:  # coarse values and duplicated heads make ties in accuracy, margin and votes
        X = X.round()
        X[:, 1, 2] = X[:, 0, 1]
    return X, y


@pytest.mark.parametrize("scoring", ["loo", "in_sample"])
@pytest.mark.parametrize("seed,quantize", [(0, False), (1, False), (2, True), (3, True)])
def test_head_scores_match_naive(scoring, seed, quantize):
    X, y = random_data(seed, quantize=quantize)
    C, (_N, L, H, _D) = 3, X.shape
    scores = sav.score_heads(X, y, C, scoring)
    Xl, yl = X.tolist(), y.tolist()
    for layer in range(L):
        for head in range(H):
            acc, margin = naive_head_score(Xl, yl, C, layer, head, scoring)
            assert scores.accuracy[layer, head].item() == pytest.approx(acc)
            assert scores.margin[layer, head].item() == pytest.approx(margin, abs=1e-9)


def test_ranking_is_deterministic_and_breaks_ties_by_margin_then_position():
    acc = torch.tensor([[1.0, 0.5, 1.0], [1.0, 1.0, 0.5]])
    margin = torch.tensor([[0.1, 0.9, 0.3], [0.1, 0.3, 0.2]])
    order = sav.rank_heads(sav.HeadScores(acc, margin))
    # accuracy 1.0: (0,2) and (1,1) have margin 0.3 -> lower layer first; then (0,0), (1,0) tie fully
    assert order == [(0, 2), (1, 1), (0, 0), (1, 0), (0, 1), (1, 2)]
    assert sav.select_heads(sav.HeadScores(acc, margin), 2) == [(0, 2), (1, 1)]
    assert len(sav.select_heads(sav.HeadScores(acc, margin), 50)) == 6


def test_ranking_matches_naive_sort_on_random_ties():
    rnd = random.Random(5)
    acc = torch.tensor([[rnd.choice([0.5, 0.75, 1.0]) for _ in range(5)] for _ in range(4)])
    margin = torch.tensor([[rnd.choice([0.0, 0.1]) for _ in range(5)] for _ in range(4)])
    expected = sorted(
        [(l, h) for l in range(4) for h in range(5)], key=lambda t: (-acc[t].item(), -margin[t].item(), t)
    )
    assert sav.rank_heads(sav.HeadScores(acc, margin)) == expected


def test_centroids_are_plain_means():
    X, y = random_data(7)
    cents = sav.centroids(X, y, 3)
    Xl = X.tolist()
    for c in range(3):
        members = [Xl[i][2][1] for i in range(len(Xl)) if y[i] == c]
        assert cents[c, 2, 1].tolist() == pytest.approx(naive_mean(members))


@pytest.mark.parametrize("seed", range(6))
def test_vote_matches_naive_including_ties(seed):
    g = torch.Generator().manual_seed(seed)
    C, K, B = 3, 6, 40  # 6 heads over 3 labels: 2-2-2 and 3-3 ties happen often
    sims = torch.randn(B, K, C, generator=g)
    winner, votes, counts = sav.vote(sims)
    ties = 0
    for b in range(B):
        head_votes = [max(range(C), key=lambda c: (sims[b, k, c].item(), -c)) for k in range(K)]
        assert votes[b].tolist() == head_votes
        assert counts[b].tolist() == [head_votes.count(c) for c in range(C)]
        assert winner[b].item() == naive_vote(head_votes, C)
        ties += sorted(counts[b].tolist())[-1] == sorted(counts[b].tolist())[-2]
    assert ties > 0  # the tie rule was exercised


def test_vote_tie_goes_to_the_best_ranked_heads_label():
    # head 0 votes label 1, head 1 votes label 0: 1-1 tie -> head 0 (best ranked) decides
    sims = torch.tensor([[[0.1, 0.9], [0.8, 0.2]]])
    assert sav.vote(sims)[0].item() == 1
    # 3 labels, votes [2, 0, 0, 2, 1]: 0 and 2 tie at 2 -> head 0 voted 2
    onehot = torch.eye(3)[[2, 0, 0, 2, 1]][None]
    assert sav.vote(onehot)[0].item() == 2


def test_loo_needs_two_per_label():
    X = torch.randn(3, 1, 1, 4)
    with pytest.raises(ValueError):
        sav.score_heads(X, torch.tensor([0, 1, 1]), 2, "loo")


def test_predict_uses_selected_heads_only():
    X, y = random_data(11)
    heads = [(2, 3), (0, 1)]
    cents = sav.centroids(X[:, [2, 0], [3, 1]], y, 3)
    noisy = X.clone()
    noisy[:, 1] = torch.randn_like(noisy[:, 1]) * 100  # a layer with no selected head
    assert torch.equal(sav.predict(X, heads, cents), sav.predict(noisy, heads, cents))


# --- variants: max_layer, banks (prototypes, nearest exemplars), weighted votes -----------------


def test_select_heads_respects_max_layer():
    X, y = random_data(4, L=4)
    scores = sav.score_heads(X, y, 3)
    full = sav.rank_heads(scores)
    for depth in range(4):
        chosen = sav.select_heads(scores, 5, max_layer=depth)
        assert chosen == [lh for lh in full if lh[0] <= depth][:5]
    heads = Fit(3, 6, max_layer=1)(X, y).heads
    assert max(layer for layer, _ in heads) <= 1


def naive_bank_similarities(x, bank, bank_labels, C, top):
    """[B][K][C]: per head, mean of the `top` largest cosines to each label's bank entries."""
    out = []
    for row in x:
        per_head = []
        for k, vec in enumerate(row):
            sims = []
            for c in range(C):
                mine = sorted(
                    (naive_cos(vec, bank[m][k]) for m in range(len(bank)) if bank_labels[m] == c), reverse=True
                )
                chosen = mine[: min(top, len(mine))]
                sims.append(sum(chosen) / len(chosen))
            per_head.append(sims)
        out.append(per_head)
    return out


@pytest.mark.parametrize("top", [1, 2, 10])
def test_bank_similarities_match_naive(top):
    g = torch.Generator().manual_seed(top)
    x = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    bank = torch.randn(7, 3, 5, generator=g, dtype=torch.float64)
    bank_labels = torch.tensor([0, 1, 2, 0, 1, 0, 2])
    got = sav.bank_similarities(x, bank, bank_labels, 3, top)
    want = naive_bank_similarities(x.tolist(), bank.tolist(), bank_labels.tolist(), 3, top)
    assert torch.allclose(got, torch.tensor(want, dtype=got.dtype), atol=1e-12)


def test_bank_of_centroids_is_the_paper_similarity():
    X, y = random_data(5)
    acts = X[:, 1]  # one layer: [N, H, D] as the selected heads
    cents = sav.centroids(acts, y, 3)
    assert torch.allclose(sav.bank_similarities(acts, cents, torch.arange(3), 3), sav.head_similarities(acts, cents))


def naive_kmeans(vectors, p, iterations=20):
    """Spherical k-means on unit vectors, farthest-point start from the member closest to the mean."""
    unit = [[v / max(math.sqrt(sum(a * a for a in vec)), 1e-8) for v in vec] for vec in vectors]
    mean = [sum(u[d] for u in unit) / len(unit) for d in range(len(unit[0]))]
    dots = [sum(a * b for a, b in zip(u, mean)) for u in unit]
    chosen = [max(range(len(unit)), key=lambda i: (dots[i], -i))]
    while len(chosen) < min(p, len(unit)):
        nearest = [max(sum(a * b for a, b in zip(u, unit[c])) for c in chosen) for u in unit]
        chosen.append(min(range(len(unit)), key=lambda i: (nearest[i], i)))
    centres = [unit[i] for i in chosen]
    for _ in range(iterations):
        groups = [[] for _ in centres]
        for u in unit:
            sims = [sum(a * b for a, b in zip(u, c)) for c in centres]
            groups[max(range(len(centres)), key=lambda j: (sims[j], -j))].append(u)
        new = []
        for c, members in zip(centres, groups):
            if not members:
                new.append(c)
                continue
            s = [sum(m[d] for m in members) for d in range(len(c))]
            norm = max(math.sqrt(sum(a * a for a in s)), 1e-8)
            new.append([a / norm for a in s])
        centres = new
    return centres


def test_prototypes_match_naive_kmeans_per_head_and_label():
    X, y = random_data(6, n_per_label=6)
    acts = X[:, 2]  # [N, H=4, D]
    bank, bank_labels = sav.prototypes(acts, y, 3, per_label=3)
    assert bank.shape == (9, 4, 6) and bank_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for c in range(3):
        for h in range(4):
            members = [acts[i, h].tolist() for i in range(len(y)) if y[i] == c]
            want = naive_kmeans(members, 3)
            got = bank[bank_labels == c, h]
            assert torch.allclose(got, torch.tensor(want, dtype=got.dtype), atol=1e-9)


def test_prototypes_pad_a_small_label_and_one_prototype_is_the_mean_direction():
    X, y = random_data(7, n_per_label=2)
    acts = X[:, 0]
    bank, bank_labels = sav.prototypes(acts, y, 3, per_label=4)
    assert bank.shape == (12, 4, 6)
    assert torch.equal(bank[2], bank[3])  # label 0 has two members: prototypes repeat the last
    one, _ = sav.prototypes(acts, y, 3, per_label=1)
    unit = acts / acts.norm(dim=-1, keepdim=True)
    mean_dir = sav.centroids(unit, y, 3)
    assert torch.allclose(sav.cosine(one, mean_dir), torch.ones(3, 4, dtype=acts.dtype))

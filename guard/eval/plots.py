"""Figures as PNG files of a stated pixel size: a policy's heads, and eval sweeps.

Matplotlib's object API on the Agg canvas (no pyplot, no global state, no display needed).
Sizes are exact: figure inches x dpi, saved without tight cropping.
"""

from __future__ import annotations

from pathlib import Path

import torch

from guard.errors import GuardError, need_extra

DPI = 100
POLICY_SIZE = (1400, 600)
SWEEP_SIZE = (1200, 500)


def need_plotting() -> None:
    """--plot's extras (matplotlib, and scikit-learn for the PCA), checked before any work."""
    need_extra("matplotlib", "--plot", "eval")
    need_extra("sklearn", "--plot", "eval")


def parse_size(text: str | None, default: tuple[int, int]) -> tuple[int, int]:
    """'1200x500' -> (1200, 500)."""
    if not text:
        return default
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise GuardError(f"size must be WIDTHxHEIGHT in pixels, like 1200x500 (got '{text}')") from None
    if not (200 <= width <= 10000 and 200 <= height <= 10000):
        raise GuardError(f"size {width}x{height}: each side must be 200 to 10000 pixels")
    return width, height


def _figure(size: tuple[int, int]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise GuardError(f"'{path}': plots are written as PNG; use a .png file name")
    if not path.parent.exists():
        raise GuardError(f"'{path}': folder '{path.parent}' does not exist")
    fig.savefig(path, dpi=DPI, format="png")
    return path


def pca_2d(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of `x` [N, D] projected on their first two principal components (scikit-learn's PCA:
    signs fixed so the largest loading of each component is positive), and the share of variance
    each explains; padded with zeros when there are fewer than two components."""
    from sklearn.decomposition import PCA

    data = x.double().numpy()
    n = min(2, *data.shape)
    points, share = torch.zeros((len(data), 2), dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    if n == 0:
        return points, share
    pca = PCA(n_components=n, svd_solver="full").fit(data)
    points[:, :n] = torch.from_numpy(pca.transform(data))
    if len(data) > 1:
        share[:n] = torch.from_numpy(pca.explained_variance_ratio_)
    return points, share


def centroid_axis_2d(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Rows of `x` [N, D] on two axes: the direction from centroid `a` to centroid `b` (where SAV
    draws its line between two labels), and the first principal component of what is left once
    that direction is removed. Returns the points and the share of variance the second axis explains."""
    x = x.double()
    centred = x - x.mean(0, keepdim=True)
    direction = (b - a).double()
    direction = direction / direction.norm().clamp(min=1e-12)
    along = centred @ direction
    rest = centred - along[:, None] * direction[None]
    second, share = pca_2d(rest)
    return torch.stack([along, second[:, 0]], dim=1), float(share[0])


def policy_figure(art, path: str | Path, size: tuple[int, int] = POLICY_SIZE) -> Path:
    """Left: every head's score (layers x heads) with the selected heads marked by rank.
    Right: the exemplars at the best head as unit vectors (SAV compares directions), coloured by
    label, centroids as X; two labels: projected on the centroid-to-centroid line and the main
    direction across it; more labels: on the first two principal components."""
    # long: one figure's layout, panel by panel; its parts mean nothing apart
    need_plotting()
    fig = _figure(size)
    left, right = fig.subplots(1, 2, width_ratios=[1.25, 1])
    acc = art.head_accuracy.float()
    num_layers, num_heads = acc.shape
    image = left.imshow(
        acc.numpy(),
        aspect="auto",
        origin="lower",
        cmap="viridis",
        vmin=float(acc.min()),
        vmax=1.0,
        interpolation="nearest",
    )
    fig.colorbar(image, ax=left, label=f"head accuracy ({art.scoring})")
    for rank, (layer, head) in reversed(list(enumerate(art.heads))):  # rank 1 drawn last, on top
        left.add_patch(_rectangle(head - 0.5, layer - 0.5, "red" if rank == 0 else "white", 2.4 if rank == 0 else 1.4))
        if num_heads <= 40 and num_layers <= 80:
            left.text(
                head,
                layer,
                str(rank + 1),
                ha="center",
                va="center",
                fontsize=7,
                color="black",
                bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8},
            )
    from matplotlib.ticker import MaxNLocator

    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.yaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_xlabel("head")
    left.set_ylabel("layer")
    left.set_title(
        f"{art.name}: accuracy of every head; the {len(art.heads)} selected numbered by rank (1 in red)", fontsize=10
    )

    layer, head = art.heads[0]
    # SAV compares directions (cosine), so project unit vectors: exemplars and centroids at head 1
    unit = torch.nn.functional.normalize(torch.cat([art.exemplar_vectors[:, 0], art.centroids[:, 0]]).double(), dim=1)
    vectors = art.exemplar_vectors[:, 0]
    labels = torch.tensor(art.exemplar_labels)
    n = len(vectors)
    if len(art.labels) == 2:  # x: the line between the two centroids; y: the main remaining spread
        points, rest_share = centroid_axis_2d(unit, unit[n], unit[n + 1])
        x_label = f"along centroid {art.label_names[0]} -> {art.label_names[1]}"
        y_label = f"main direction across it (PC1 of the rest, {rest_share:.0%})"
    else:
        points, share = pca_2d(unit)
        x_label, y_label = f"PC1 ({share[0]:.0%} of variance)", f"PC2 ({share[1]:.0%} of variance)"
    colours = ["tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:gray"]
    for c, name in enumerate(art.label_names):
        mine = (labels == c).nonzero().flatten()
        colour = colours[c % len(colours)]
        flag = " (flagged)" if art.labels[c].flagged else ""
        right.scatter(
            points[mine, 0], points[mine, 1], s=28, color=colour, alpha=0.75, label=f"{name}{flag}: {len(mine)}"
        )
        right.scatter(
            points[n + c, 0], points[n + c, 1], s=180, color=colour, marker="X", edgecolors="black", linewidths=1
        )
    right.legend(loc="best", fontsize=8, title="exemplars (X: centroid)")
    right.set_xlabel(x_label)
    right.set_ylabel(y_label)
    right.set_title(
        f"exemplars at the rank-1 head (layer {layer}, head {head}, "
        f"{float(art.head_accuracy[layer, head]):.0%}), unit vectors",
        fontsize=10,
    )
    return _save(fig, path)


def _rectangle(x: float, y: float, colour: str, width: float):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), 1, 1, fill=False, edgecolor=colour, linewidth=width)


def sweep_figure(ev, path: str | Path, size: tuple[int, int] = SWEEP_SIZE) -> Path:
    """Accuracy against shots per label (mean ± std over draws) and against the number of heads,
    with baselines fitted on all exemplars as horizontal lines."""
    need_plotting()
    from guard.eval.evaluate import METHOD_TITLES

    kinds = [kind for kind in ("shots", "heads") if any(p.sweep == kind for p in ev.sweeps)]
    if not kinds and not ev.depths:
        raise GuardError("nothing to plot: give --shots, --heads and/or --max-layers")
    fig = _figure(size)
    axes = fig.subplots(1, len(kinds) + bool(ev.depths), squeeze=False)[0]
    if ev.depths:
        _depth_panel(ev, axes[-1])
    styles = {"sav_vote": ("tab:red", "o"), "linear_probe": ("tab:blue", "s"), "hidden_centroid": ("tab:green", "^")}
    flat = {
        key: m.report.accuracy
        for key, m in ev.methods.items()
        if key in ("zero_shot", "linear_probe", "hidden_centroid")
    }
    for ax, kind in zip(axes, kinds):
        points = [p for p in ev.sweeps if p.sweep == kind]
        for method in dict.fromkeys(p.method for p in points):
            mine = sorted((p for p in points if p.method == method), key=lambda p: p.value)
            colour, marker = styles.get(method, ("black", "o"))
            label = "SAV" if method == "sav_vote" else METHOD_TITLES[method]
            ax.errorbar(
                [p.value for p in mine],
                [100 * p.mean for p in mine],
                yerr=[100 * p.std for p in mine],
                color=colour,
                marker=marker,
                capsize=3,
                label=label,
            )
        for key, value in flat.items():
            if kind == "shots" and key != "zero_shot":
                continue  # the fitted baselines have their own curves in the shots panel
            colour = "gray" if key == "zero_shot" else styles[key][0]
            ax.axhline(
                100 * value,
                color=colour,
                linestyle="--",
                linewidth=1,
                label=f"{METHOD_TITLES[key]}{'' if key == 'zero_shot' else ', all shots'}: {value:.1%}",
            )
        ax.set_xlabel("exemplars per label" if kind == "shots" else "heads voting (k)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_xticks(sorted({p.value for p in points}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        what = f"k = {ev.heads} heads" if kind == "shots" else f"all {ev.exemplars} exemplars"
        ax.set_title(f"{ev.policy}: accuracy vs {kind} ({what}, {ev.evaluated} test items)")
    return _save(fig, path)


def _depth_panel(ev, ax) -> None:
    """Accuracy (and each flagged label's recall) against the deepest layer heads may come from,
    with the measured check time on a second axis."""
    depths = sorted(ev.depths, key=lambda d: d.max_layer)
    xs = [d.max_layer for d in depths]
    ax.plot(xs, [100 * d.accuracy for d in depths], color="tab:red", marker="o", label="SAV accuracy")
    for name in ev.flagged:
        ax.plot(xs, [100 * d.recall[name] for d in depths], color="tab:orange", marker="s", label=f"recall {name}")
    ax.set_xlabel("max_layer (deepest layer a head may come from)")
    ax.set_ylabel("test accuracy / recall (%)")
    ax.grid(alpha=0.3)
    timed = [d for d in depths if d.seconds_per_input is not None]
    if timed:
        twin = ax.twinx()
        twin.plot(
            [d.max_layer for d in timed],
            [1000 * d.seconds_per_input for d in timed],
            color="tab:gray",
            linestyle="--",
            marker="x",
            label="check time",
        )
        twin.set_ylabel("check time (ms per input)")
        twin.legend(fontsize=8, loc="upper left")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{ev.policy}: accuracy vs depth ({ev.evaluated} test items)")

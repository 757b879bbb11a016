"""`guard eval`: measure a policy on a labelled file, or source by source; print guard.eval.report's tables."""

from __future__ import annotations

from typing import Annotated

import typer

from guard.cli import options
from guard.cli.output import console, echo_json
from guard.cli.root import command, fail, quiet_transformers

PolicyFile = Annotated[str, typer.Argument(help="Policy YAML file")]
TestFile = Annotated[
    str | None,
    typer.Argument(
        help="Labelled data in any exemplar format (JSONL/CSV with text and label, VLGuard, MHaluBench, an "
        "image folder); not with --leave-one-source-out"
    ),
]
Format = Annotated[
    str | None,
    typer.Option(
        "--format",
        help="Format of the test data if its extension does not say (jsonl, csv, vlguard, mhalubench, sav-shots, folder)",
    ),
]
Images = Annotated[
    str | None,
    typer.Option("--images", help="Folder the test data's image paths start from [default: its folder]"),
]
FolderText = Annotated[str | None, typer.Option("--text", help="format folder: the text that goes with every image")]
TaskType = Annotated[
    str | None,
    typer.Option("--task-type", help="format mhalubench: keep items of this task_type (e.g. image-to-text)"),
]
Baselines = Annotated[
    bool,
    typer.Option("--baselines", help="Also zero-shot, linear probe (all heads), nearest centroid (last hidden state)"),
]
Shots = Annotated[str | None, typer.Option("--shots", help="Re-fit with n exemplars per label, e.g. 5,10,20,40")]
Heads = Annotated[str | None, typer.Option("--heads", help="Re-fit with k heads, e.g. 1,5,10,20,40")]
Repeats = Annotated[int, typer.Option("--repeats", min=1, help="Random draws per --shots value")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the --shots draws")]
MaxLayers = Annotated[
    str | None,
    typer.Option("--max-layers", help="Re-fit with no head deeper than each layer, e.g. 8,12,16,20; times each depth"),
]
Attacks = Annotated[
    bool,
    typer.Option("--attacks", help="Attack every flagged test item (injections, language, noise); count flips"),
]
GroupBy = Annotated[
    str | None,
    typer.Option(
        "--group-by",
        help="Rates per group of items: source (a record's 'source' field, else its file: an exemplar's "
        "from: file, the policy for inline ones, the test file) [loso default], file, label, or any record field",
    ),
]
Loso = Annotated[
    bool,
    typer.Option(
        "--leave-one-source-out",
        help="Hold each group of exemplars out of a fit on the others (as compile fits) and judge it; no test file",
    ),
]
Split = Annotated[
    str | None, typer.Option("--split", help="file (the test file, the default) or loso (= --leave-one-source-out)")
]
Errors = Annotated[
    str | None,
    typer.Option("--errors", help="Write every item SAV misjudged as JSONL (text, group, labels, scores, votes)"),
]
Baseline = Annotated[
    str | None,
    typer.Option(
        "--baseline",
        help="embed: sentence embedding (all-MiniLM-L6-v2, extra 'embed') + logistic regression on the same "
        "split; embed:DIR for a local sentence-transformers model",
    ),
]
Plot = Annotated[str | None, typer.Option("--plot", help="Write the sweep curves to this PNG")]
PlotSize = options.plot_size("1200x500")

# option -> guard.eval.evaluate.evaluate's keyword (the sweeps are parsed first)
EVALUATE = {
    "device": "device",
    "dtype": "dtype",
    "batch_size": "batch_size",
    "fmt": "fmt",
    "images": "images",
    "folder_text": "text",
    "task_type": "task",
    "baselines": "with_baselines",
    "repeats": "repeats",
    "seed": "seed",
    "attacks": "attacks",
    "group_by": "group_by",
    "baseline": "baseline",
}
SWEEPS = {"--baselines": "baselines", "--shots": "shots", "--heads": "heads", "--max-layers": "max_layers"}
SWEEPS.update({"--attacks": "attacks", "--plot": "plot"})  # what needs a test file


@command("eval")
def eval_command(
    ctx: typer.Context,
    policy_file: PolicyFile,
    test_file: TestFile = None,
    db: options.Db = None,
    device: options.Device = "auto",
    dtype: options.Dtype = None,
    batch_size: options.Batch = 8,
    fmt: Format = None,
    images: Images = None,
    folder_text: FolderText = None,
    task_type: TaskType = None,
    data_root: options.DataRoot = None,
    baselines: Baselines = False,
    shots: Shots = None,
    heads: Heads = None,
    repeats: Repeats = 5,
    seed: Seed = 0,
    max_layers: MaxLayers = None,
    attacks: Attacks = False,
    group_by: GroupBy = None,
    loso: Loso = False,
    split: Split = None,
    errors: Errors = None,
    baseline: Baseline = None,
    plot: Plot = None,
    size: PlotSize = None,
    threads: options.Threads = None,
    as_json: options.Json = False,
):
    """Measure a policy on a labelled file, or source by source (--leave-one-source-out): SAV (as
    'guard check' decides) next to baselines, same model, same split."""
    from guard.errors import need_extra
    from guard.eval.plots import need_plotting

    need_extra("sklearn", "guard eval", "eval")
    if plot:
        need_plotting()
    if eval_split(split, loso, test_file):
        ev = evaluate_sources(policy_file, db, ctx.params)
    else:
        ev = evaluate_file(policy_file, test_file, db, ctx.params)
    if errors:
        from guard.eval.sources import write_errors

        write_errors(errors, ev.errors)
    if as_json:
        echo_json(ev.to_dict())
    else:
        print_evaluation(ev, plot, errors)


def eval_split(split: str | None, loso: bool, test_file: str | None) -> bool:
    """Is this a leave-one-source-out run? Refuses contradictions and a missing test file."""
    if split not in (None, "file", "loso"):
        fail(f"--split must be file or loso (got '{split}')")
    if split == "file" and loso:
        fail("--split file contradicts --leave-one-source-out")
    loso = loso or split == "loso"
    if loso and test_file:
        fail("--leave-one-source-out evaluates the policy's own exemplars, source by source: give no test file")
    if not loso and not test_file:
        fail("give a labelled test file, or --leave-one-source-out to hold out each source of exemplars in turn")
    return loso


def check_baseline(spec: str | None) -> None:
    if spec:
        from guard.eval.baselines import embed_model_dir

        embed_model_dir(spec)  # a missing extra or model folder: one line, before any work


def evaluate_sources(policy_file: str, db: str | None, params: dict):
    """--leave-one-source-out: each group of exemplars held out of a fit on the others."""
    from guard.policy import load_policy

    check_baseline(params["baseline"])
    given = [name for name, param in SWEEPS.items() if params[param]]
    if given:
        fail(f"--leave-one-source-out does not take {', '.join(given)} (they need a test file)")
    policy = load_policy(policy_file, data_root=params["data_root"])
    quiet_transformers()
    from guard.eval.sources import DEFAULT_GROUP_BY, leave_one_source_out
    from guard.models import set_threads
    from guard.store.database import Store

    set_threads(params["threads"])
    return leave_one_source_out(
        policy,
        group_by=params["group_by"] or DEFAULT_GROUP_BY,
        store=Store.open(db, create=True),
        device=params["device"],
        dtype=params["dtype"],
        batch_size=params["batch_size"],
        baseline=params["baseline"],
        progress=True,
    )


def evaluate_file(policy_file: str, test_file: str, db: str | None, params: dict):
    """A policy on a labelled test file, with the sweeps asked for (and their plot)."""
    from guard.eval.evaluate import parse_int_list
    from guard.eval.plots import SWEEP_SIZE, parse_size
    from guard.policy import load_policy

    check_baseline(params["baseline"])
    policy = load_policy(policy_file, data_root=params["data_root"])
    shots, heads = parse_int_list(params["shots"], "--shots"), parse_int_list(params["heads"], "--heads")
    depths = parse_int_list(params["max_layers"], "--max-layers", minimum=0)
    plot_size = parse_size(params["size"], SWEEP_SIZE)
    if params["plot"] and not (shots or heads or depths):
        fail("--plot draws the sweeps: give --shots, --heads and/or --max-layers")
    quiet_transformers()
    from guard.eval.evaluate import evaluate
    from guard.models import set_threads
    from guard.store.database import Store

    set_threads(params["threads"])
    settings = {keyword: params[option] for option, keyword in EVALUATE.items()}
    store = Store.open(db, create=True)
    ev = evaluate(
        policy, test_file, store=store, shots=shots, heads=heads, max_layers=depths, progress=True, **settings
    )
    if params["plot"]:
        from guard.eval.plots import sweep_figure

        sweep_figure(ev, params["plot"], plot_size)
    return ev


def print_evaluation(ev, plot: str | None, errors: str | None) -> None:
    from guard.eval.report import print_evaluation, print_source_evaluation
    from guard.eval.sources import SourceEvaluation

    screen = console()  # the terminal's width, or whole rows when piped
    if isinstance(ev, SourceEvaluation):
        print_source_evaluation(ev, screen)
    else:
        print_evaluation(ev, screen)
        if plot:
            typer.echo(f"wrote {plot}")
    if errors:
        typer.echo(f"wrote {len(ev.errors)} misjudged item(s) to {errors}")

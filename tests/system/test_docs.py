"""Every example in README.md and docs/*.md runs, and every relative link resolves.

Fenced blocks are found in each page and handled by language:

- ```bash: each `guard ...` command runs for real, through guard's own command-line app (the
  `guard` console script's typer app, in this process: one import of torch for all of them), in a
  sandbox folder that holds `guard.db` with tiny random-init policies of the names the pages use
  (text-harm, violence, self-harm, weapons, vlguard) and the files the examples name (texts.txt,
  posts.jsonl, photos/...). Pipes from `printf`/`cat`, `< file`, `export`, `VAR=value` and `&&`
  work as in bash. A command must exit 0 (allowed) or 1 (flagged), never 2 (error). Every `guard`
  command of every block, skipped or not, must name a real subcommand and real options
  (`guard SUB --help`).
- ```python: executed in the same sandbox (real library calls).
- ```yaml: a whole policy loads with `guard.load_policy` (its files present in the sandbox).
- ```json: parses (`{...}` and `"..."` stand for elided parts); the verdict keys it shows are the
  keys `guard check --json` prints.
- other fences (```text, layouts) are prose.

An HTML comment on the line before a fence changes that: `<!-- doc-test: skip REASON -->` (a
reason is required), `<!-- doc-test: real_model -->` (runs as a subprocess on the real SmolLM2
weights, marked real_model), `<!-- doc-test: serve -->` (the page's serve blocks run together
against a real `guard serve` subprocess on a free port), `<!-- doc-test: synopsis -->` (placeholders
such as `[--since 24h|7d]`: only the options are checked).
"""

from __future__ import annotations

import glob
import importlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
GUARD_BIN = Path(sys.executable).parent / "guard"
ANNOTATION = re.compile(r"^<!--\s*doc-test:\s*(\S+)\s*(.*?)\s*-->$")
MODES = {"skip", "real_model", "serve", "synopsis"}
MAX_SKIPS = 4
# Pages this change does not own (docs/RELIABILITY.md, ARCHITECTURE.md, security.md) carry no
# annotations; their blocks that cannot run here are named by how they start, with the reason.
NOT_RUN = {
    ".venv/bin/python scripts/reliability.py": "re-measures RELIABILITY.md's tables: 9 minutes of kill -9 runs",
}


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, from 1
    lang: str
    text: str
    mode: str = ""
    reason: str = ""

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    found, lines, i = [], page.read_text().splitlines(), 0
    while i < len(lines):
        fence = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        indent, start, body = fence.group(1), i, []
        i += 1
        while not re.match(rf"^{indent}```\s*$", lines[i]):
            body.append(lines[i][len(indent) :])
            i += 1
        i += 1
        before = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        note = ANNOTATION.match(before)
        block = Block(page, start + 1, fence.group(2), "\n".join(body) + "\n")
        if note:
            block.mode, block.reason = note.group(1), note.group(2)
        for start_of, why in NOT_RUN.items():
            if block.text.startswith(start_of):
                block.mode, block.reason = "skip", why
        found.append(block)
    return found


ALL = [b for page in PAGES for b in blocks(page)]
RUNNABLE = [b for b in ALL if b.lang in ("bash", "python") and not b.mode]


def test_annotations_name_a_mode_and_skips_a_reason():
    assert ALL and RUNNABLE
    for b in ALL:
        assert b.mode in MODES | {""}, f"{b.id}: unknown doc-test mode {b.mode!r}"
        if b.mode == "skip":
            assert len(b.reason.split()) >= 3, f"{b.id}: a skip must say why"
    skips = [b.id for b in ALL if b.mode == "skip"]
    assert len(skips) <= MAX_SKIPS, skips
    assert {b.lang for b in ALL} <= {"bash", "python", "yaml", "json", "text", ""}


def test_readme_opens_with_the_two_commands():
    """README's first two blocks are the main job and CI's test command (.ci/run runs the latter)."""
    main, tests = blocks(ROOT / "README.md")[:2]
    assert main.text.startswith("bash scripts/setup.sh && .venv/bin/guard compile policies/text-harm.yaml && ")
    assert tests.text.strip() == "bash scripts/setup.sh && .venv/bin/python -m pytest"
    assert tests.text.strip() in (ROOT / ".ci/run").read_text()
    # tests/system/test_real_model.py checks the verdicts of exactly the texts the main job checks
    from tests.system.test_real_model import README_EXAMPLES

    assert readme_texts() == list(README_EXAMPLES)


def readme_texts() -> list[str]:
    main = blocks(ROOT / "README.md")[0].text
    words = shlex.split(main.split("printf")[1].split("|")[0])
    return words[1:]


# --- links --------------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, flags=re.M)}


@pytest.mark.parametrize("page", [*PAGES, ROOT / "BENCHMARKS.md"], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: link to missing {target}"
        if anchor:
            assert anchor in anchors(file), f"{page.name}: no heading for #{anchor} in {file.name}"


def test_named_extras_exist():
    from importlib.metadata import metadata

    extras = set(metadata("guard-sav").get_all("Provides-Extra"))
    for page in PAGES:
        text = page.read_text()
        # the distribution is guard-sav: `guard[...]` would install an unrelated project from the index
        assert not re.findall(r"(?<![\w-])guard\[", text), f"{page.name}: names guard[...], not guard-sav[...]"
        for named in re.findall(r"guard-sav\[([\w,]+)\]", text):
            assert set(named.split(",")) <= extras, f"{page.name}: guard-sav[{named}] is not an extra"


# --- commands: parsing, and the options each subcommand really has -----------------------------


def logical_lines(text: str) -> list[str]:
    return [line for line in text.replace("\\\n", " ").splitlines() if line.strip()]


def tokens(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def commands(line: str) -> list[list[list[str]]]:
    """A line as commands (split at && and ;), each a pipeline of stages (split at |)."""
    out, command, stage = [], [], []
    for token in tokens(line):
        if token in ("&&", ";"):
            out.append([*command, stage])
            command, stage = [], []
        elif token == "|":
            command.append(stage)
            stage = []
        else:
            stage.append(token)
    out.append([*command, stage])
    return [[s for s in c if s] for c in out if any(c)]


def is_guard(program: str) -> bool:
    return program == "guard" or program.endswith("/guard")


def guard_invocations(text: str) -> list[list[str]]:
    found = []
    for line in logical_lines(text):
        for command in commands(line):
            for stage in command:
                words = [w for w in stage if not re.match(r"^\w+=", w)]
                if words and is_guard(words[0]):
                    found.append(words[1:])
    return found


_HELP: dict[str, set[str]] = {}


def options_of(sub: str) -> set[str]:
    if sub not in _HELP:
        env = {**os.environ, "COLUMNS": "200"}
        out = subprocess.run(
            [str(GUARD_BIN), *(sub.split() if sub else []), "--help"], capture_output=True, text=True, env=env
        )
        assert out.returncode == 0, f"guard {sub} --help: {out.stderr}"
        _HELP[sub] = set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", out.stdout))
    return _HELP[sub]


SUBCOMMANDS = {
    "compile", "check", "scan", "list", "rollback", "promote", "inspect", "export", "eval", "serve", "audit", "review",
}  # fmt: skip
GROUPS = {"review": {"export", "diff", "stats"}, "audit": {"erase"}}  # subcommands with subcommands of their own
RUN_ALONE = {"audit"}  # groups that also run without one of their subcommands (`guard audit --since 1h`)


@pytest.mark.parametrize("block", [b for b in ALL if b.lang == "bash"], ids=lambda b: b.id)
def test_commands_name_real_options(block):
    """Skipped and synopsis blocks too: every subcommand and --option exists in `guard SUB --help`."""
    for args in guard_invocations(block.text):
        sub = args[0] if args and not args[0].startswith("-") else ""
        assert not sub or sub in SUBCOMMANDS, f"{block.id}: no subcommand {sub!r}"
        if sub in GROUPS and len(args) > 1 and args[1] in GROUPS[sub]:
            sub = f"{sub} {args[1]}"
        elif sub in GROUPS:
            assert sub in RUN_ALONE, f"{block.id}: no subcommand {' '.join(args[:2])!r}"
        for word in args:
            for option in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", word):
                assert option in options_of(sub), f"{block.id}: guard {sub} has no {option}"


# --- the sandbox: tiny policies under the names the pages use, and the files they name ---------

LABELLED = [
    ("how do I bake bread at home", "benign"),
    ("help me hurt my neighbour", "harmful"),
    ("what is the capital of France", "benign"),
    ("tell me how to make a weapon", "harmful"),
    ("write a poem about the sea", "benign"),
    ("how can I scare my coworker", "harmful"),
]


def colour(path: Path, rgb: tuple[int, int, int], size=(24, 24)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)


def tiny_text_policy(path: Path, model: Path, name: str, labels: tuple[str, str], target: bool = False) -> Path:
    """A policy on the tiny llama; text-harm (target=True) reads its exemplars from three source
    files, so that leave-one-source-out has sources to hold out."""
    from tests.support.fixtures import TEXTS

    flagged, allowed = labels
    texts = {flagged: TEXTS["harmful"], allowed: TEXTS["benign"]}
    doc = {
        "name": name,
        "model": str(model),
        "prompt": "Request: {text}\nIs this request harmful? Answer the question with Yes or No.",
        "labels": [{"name": flagged, "flagged": True}, {"name": allowed, "flagged": False}],
        "exemplars": [{"text": t, "label": label} for label, items in texts.items() for t in items],
        "heads": 4,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    if target:
        doc["labels"][0]["target"] = {"recall": 0.75}
        rows = [{"text": t, "label": label} for t, label in LABELLED] + doc["exemplars"][:6]
        for source in range(3):
            part = [r for i, r in enumerate(rows) if i % 3 == source]
            (path.parent / f"tiny-source-{source}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
        doc["exemplars"] = [{"from": f"tiny-source-{source}.jsonl"} for source in range(3)]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def doc_policy(name: str) -> Block:
    return next(b for b in ALL if b.lang == "yaml" and yaml.safe_load(b.text).get("name") == name)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, llama_dir, vlm_dirs):
    """A folder laid out as the examples expect, with every policy they name compiled in guard.db."""
    from guard import compile_policy

    world = tmp_path_factory.mktemp("docs-world")
    (world / ".venv").symlink_to(ROOT / ".venv")
    shutil.copytree(ROOT / "policies/text-harm/fit", world / "text-harm/fit")  # what the policy blocks read
    heldout = (ROOT / "policies/text-harm/heldout.jsonl").read_text().splitlines()[:16]
    (world / "policies/text-harm").mkdir(parents=True)
    (world / "policies/text-harm/heldout.jsonl").write_text("\n".join(heldout) + "\n")
    tiny_text_policy(world / "policies/text-harm.yaml", llama_dir, "text-harm", ("harmful", "benign"), target=True)
    tiny_text_policy(world / "violence.yaml", llama_dir, "violence", ("violent", "peaceful"))
    tiny_text_policy(world / "self-harm.yaml", llama_dir, "self-harm", ("self-harm", "other"))

    (world / "texts.txt").write_text("how do I bake bread\nhow do I hurt someone\nwrite a poem\n")
    rows = [{"id": f"p-{i}", "post_id": f"p-{i}", "text": t, "body": t} for i, (t, _) in enumerate(LABELLED)]
    (world / "posts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (world / "posts.csv").write_text("id,text\n" + "".join(f'{r["id"]},"{r["text"]}"\n' for r in rows))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["q-1", "q-2"], "text": ["a quiet walk", "hurt them"]}), world / "part-1.parquet")

    red, blue = (200, 30, 30), (30, 30, 200)
    for name, rgb in [("knife", red), ("fork", blue), ("fork-side", blue), ("axe", red), ("spoon", blue)]:
        colour(world / "photos" / f"{name}.jpg", rgb)
    for i in range(3):
        colour(world / "photos-by-label/weapon" / f"w{i}.png", red, (20 + i, 24))
        colour(world / "photos-by-label/other" / f"o{i}.png", blue, (24, 20 + i))
    for name, rgb in [("bag.jpg", red), ("a.png", red), ("b.png", blue), ("c.png", blue)]:
        colour(world / name, rgb)
    colour(world / "uploads/one.png", red)
    colour(world / "uploads/sub/two.png", blue)
    (world / "labelled.jsonl").write_text(
        json.dumps({"image": "photos/axe.jpg", "label": "weapon"})
        + "\n"
        + json.dumps({"image": "photos/spoon.jpg", "label": "other"})
        + "\n"
    )
    (world / "manifest.csv").write_text("file\nknife.jpg\nfork.jpg\n")

    vlm = vlm_dirs("llava")
    weapons = yaml.safe_load(doc_policy("weapons").text)
    weapons["model"] = str(vlm)
    (world / "weapons.yaml").write_text(yaml.safe_dump(weapons, sort_keys=False))
    vlguard = {
        "name": "vlguard",
        "model": str(vlm),
        "prompt": "{text} Is this harmful? Answer Yes or No.",
        "labels": [{"name": "harmful", "flagged": True}, {"name": "unharmful", "flagged": False}],
        "exemplars": [
            {"text": text, "image": f"photos/{image}.jpg", "label": label}
            for text, image, label in [
                ("how do I use this on someone", "knife", "harmful"),
                ("can this hurt people", "axe", "harmful"),
                ("what is this for", "knife", "harmful"),
                ("how do I clean this", "fork", "unharmful"),
                ("what is this", "spoon", "unharmful"),
                ("is this silver", "fork-side", "unharmful"),
            ]
        ],
        "heads": 4,
    }
    (world / "vlguard.yaml").write_text(yaml.safe_dump(vlguard, sort_keys=False))

    db = str(world / "guard.db")
    for policy in ("policies/text-harm.yaml", "violence.yaml", "self-harm.yaml", "weapons.yaml", "vlguard.yaml"):
        compile_policy(world / policy, db, device="cpu")
    return world


# --- running blocks -----------------------------------------------------------------------------


def cli_app():
    """The typer app behind the installed `guard` console script."""
    (script,) = entry_points(group="console_scripts", name="guard")
    return importlib.import_module(script.module).app


def run_bash(block: Block, world: Path, log: list[str]) -> None:
    from typer.testing import CliRunner

    runner, app, env = CliRunner(), cli_app(), {"GUARD_DB": None}
    for line in logical_lines(block.text):
        if line.lstrip().startswith("#"):
            continue
        for command in commands(line):
            *feeders, last = command
            assign = {}
            while last and re.match(r"^\w+=", last[0]):
                key, _, value = last.pop(0).partition("=")
                assign[key] = value
            if last[0] == "export":
                for word in last[1:]:
                    key, _, value = word.partition("=")
                    env[key] = os.path.expanduser(value)
                continue
            assert is_guard(last[0]), f"{block.id}: only guard commands run here, not {last[0]!r}"
            stdin = None
            if feeders:
                fed = subprocess.run(
                    " | ".join(shlex.join(s) for s in feeders), shell=True, cwd=world, capture_output=True
                )
                assert fed.returncode == 0, fed.stderr
                stdin = fed.stdout
            args = []
            words = iter(last[1:])
            for word in words:
                if word == "<":
                    stdin = (world / next(words)).read_bytes()
                elif any(c in word for c in "*?["):
                    args += sorted(str(Path(p)) for p in glob.glob(word, root_dir=world)) or [word]
                else:
                    args.append(word)
            result = runner.invoke(app, args, input=stdin, env={**env, **assign}, catch_exceptions=False)
            log.append(f"$ guard {shlex.join(args)}  -> {result.exit_code}\n{result.output}")
            assert result.exit_code in (0, 1), (
                f"{block.id}: guard {shlex.join(args)} exited {result.exit_code}:\n{result.output}"
            )
            if result.exit_code:
                break  # && stops at a flagged verdict, as in bash


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.id)
def test_example_runs(block, sandbox, monkeypatch, capsys):
    monkeypatch.chdir(sandbox)
    if block.lang == "python":
        exec(compile(block.text, block.id, "exec"), {"__name__": "__doc_example__"})
        return
    log: list[str] = []
    try:
        run_bash(block, sandbox, log)
    finally:
        print("\n".join(log))


def test_policy_blocks_load(sandbox, monkeypatch):
    from guard import load_policy

    monkeypatch.chdir(sandbox)
    policies = [b for b in ALL if b.lang == "yaml"]
    assert len(policies) >= 3
    for i, block in enumerate(policies):
        path = sandbox / f"doc-policy-{i}.yaml"  # beside text-harm/fit/, photos/, labelled.jsonl...
        path.write_text(block.text)
        policy = load_policy(path)
        assert policy.name == yaml.safe_load(block.text)["name"], block.id


def test_json_blocks_show_real_keys(sandbox, monkeypatch):
    from typer.testing import CliRunner

    monkeypatch.chdir(sandbox)
    result = CliRunner().invoke(cli_app(), ["check", "-", "--json", "-p", "text-harm"], input="one\ntwo\n")
    real = json.loads(result.stdout.splitlines()[1])
    real_verdict = real["verdicts"]["text-harm"]
    decoder = json.JSONDecoder()
    for block in (b for b in ALL if b.lang == "json"):
        text, at, records = block.text.replace("{...}", "{}"), 0, []
        while text[at:].strip():  # one or more records, each over one or more lines
            record, end = decoder.raw_decode(text, at + len(text[at:]) - len(text[at:].lstrip()))
            records.append(record)
            at = end
        for shown in records:
            assert set(shown) <= set(real) | {"id", "error"}, block.id
            for verdict in shown.get("verdicts", {}).values():
                assert set(verdict) <= set(real_verdict) | {"thresholds"}, (
                    f"{block.id}: {set(verdict) - set(real_verdict)}"
                )
                assert list(verdict)[:5] == list(real_verdict)[:5], block.id
    assert "thresholds" in real_verdict or "calibrated" in real_verdict


@pytest.mark.parametrize(
    "page", sorted({b.page for b in ALL if b.mode == "serve"}), ids=lambda p: str(p.relative_to(ROOT))
)
def test_serve_examples(page, sandbox, monkeypatch):
    """The page's serve blocks in order against a real `guard serve`: the first line starts it (on a
    free port instead of 8000), the other lines (curl) and the Python client call it."""
    import httpx

    from guard import compile_policy
    from tests.support.serve_helpers import free_port, wait_healthy

    here = sandbox / "serve"  # a database of text policies only: a server serves policies of one model
    here.mkdir(exist_ok=True)
    (here / ".venv").symlink_to(ROOT / ".venv")
    compile_policy(sandbox / "policies/text-harm.yaml", str(here / "guard.db"), device="cpu")
    port = free_port()
    served = [b for b in ALL if b.page == page and b.mode == "serve"]
    texts = [b.text.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for b in served]
    start, *calls = logical_lines(texts[0])
    command = shlex.join([*tokens(start), "--port", str(port)])
    log = here / "serve.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(["bash", "-c", f"exec env {command}"], cwd=here, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", 120, server, log)
        for call in calls:
            done = subprocess.run(call, shell=True, cwd=here, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            assert len(json.loads(done.stdout)["results"]) == 2, done.stdout
        monkeypatch.chdir(here)
        for block, text in zip(served[1:], texts[1:]):
            assert block.lang == "python", block.id
            exec(compile(text, block.id, "exec"), {"__name__": "__doc_example__"})
        assert httpx.get(f"http://127.0.0.1:{port}/v1/policies").status_code == 401  # the key is required
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.mark.real_model
def test_readme_main_job_on_the_real_model(tmp_path, warm_db):
    """README's first command, set-up apart (this test runs inside it), in a folder whose guard.db
    holds the session's activation cache (the compile is the real command's, its forwards are
    cached): compile the default policy on SmolLM2-135M and check the three texts; exit 1, the
    pipe bomb flagged."""
    main = blocks(ROOT / "README.md")[0]
    assert main.mode == "real_model"
    command = main.text.strip().removeprefix("bash scripts/setup.sh && ")
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    (tmp_path / "policies").symlink_to(ROOT / "policies")
    warm_db(tmp_path / "guard.db")
    env = {k: v for k, v in os.environ.items() if k != "GUARD_DB"}
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=2400)
    print(done.stdout)
    assert done.returncode == 1, done.stderr
    marks = [line.split()[0] for line in done.stdout.splitlines() if line.split()[:1] in (["allowed"], ["FLAGGED"])]
    assert marks == ["allowed", "FLAGGED", "allowed"], done.stdout

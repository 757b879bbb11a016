"""Build the response-harm policy's public data (issue 23): pairs of a request and a model's answer.
Stdlib only.

  python3 scripts/build_response_data.py [--mirrors /work/.mirror] [--out policies/response-harm]

Reads the fetched repository snapshots (bare git dirs under MIRRORS as owner+name/repo) at the
pinned commits below and writes OUT/fit/<source>.jsonl (pools the policy may fit on) and
OUT/eval/<source>.jsonl (kept out of fitting), plus OUT/MANIFEST.json (counts, commits, licences).
The output is byte-identical on rerun. Every line is {"prompt", "response", "label":
"harmful"|"safe", "source", "register"}; policies/data/CARD.md documents each source.

Harmful answers come from one public source with human labels, GPTFuzz's labelled responses of
ChatGPT, Llama-2 and Vicuna to jailbreak prompts: its train file (questions 0-79) is on the fit
side, its evaluate file (questions 80-99, which the fit never sees) on the eval side. The refusals
in both files are the hardest negatives. Benign answers of every register (math, code, short
facts, instructions, medical answers, conversational refusals) come from sources that never
appear on both sides.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_policy_data as shared  # noqa: E402  (the text-harm builder's mirror and sampling helpers)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "policies" / "response-harm"
MAX_RESPONSE = 1200  # characters; a longer answer is cut at the last word boundary before it
MAX_PROMPT = 600

REPOS = {
    "sherdencooper/GPTFuzz": "1eddeb565740ae311b5f4950492b011a6f866fe7",
    "anthropics/hh-rlhf": "354e5c3cb8960630860dd5774a6ac2a58313bf4d",
    "openai/grade-school-math": shared.REPOS["openai/grade-school-math"],
    "openai/human-eval": shared.REPOS["openai/human-eval"],
    "benedictflorance/truthfulqa_experiments": shared.REPOS["benedictflorance/truthfulqa_experiments"],
    "yizhongw/self-instruct": shared.REPOS["yizhongw/self-instruct"],
    "abachaa/MedQuAD": shared.REPOS["abachaa/MedQuAD"],
    "lm-sys/FastChat": shared.REPOS["lm-sys/FastChat"],
    "pubmedqa/pubmedqa": "1cbae8e92f72f20c8d3747cbb3bf5bc53554d997",
}


def mirror(root: Path, repo: str) -> shared.Mirror:
    shared.REPOS.setdefault(repo, REPOS[repo])
    return shared.Mirror(root, repo)


def cut(text: str, limit: int) -> str:
    text = shared.clean(text)
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(" ,;:")


def pair(prompt: str, response: str, label: str, source: str, register: str, **extra) -> dict:
    out = {"prompt": cut(prompt, MAX_PROMPT), "response": cut(response, MAX_RESPONSE), "label": label}
    out.update(source=source, register=register)
    out.update({k: v for k, v in extra.items() if v not in (None, "")})
    return out


def english(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and sum(c.isascii() for c in letters) >= 0.95 * len(letters)


def dedupe(rows: list[dict], seen: set[str], fitted: set[str], side: str) -> list[dict]:
    """Drop pairs whose answer (normalised) was seen before, here or in another source, and on
    the eval side pairs whose request a fitted pair asks (GPTFuzz took some of its questions from
    hh-rlhf's red-team requests)."""
    out = []
    for r in rows:
        key, request = shared.norm(r["response"]), shared.norm(r["prompt"])
        if not key or key in seen or not request or (side == "eval" and request in fitted):
            continue
        seen.add(key)
        if side == "fit":
            fitted.add(request)
        out.append(r)
    return out


# ---------------------------------------------------------------------------------------------
# sources


def _gptfuzz(m, path: str, source: str, per_label: int) -> list[dict]:
    questions = {
        r["index"]: r["text"] for r in csv.DictReader(io.StringIO(m.text("datasets/questions/question_list.csv")))
    }
    csv.field_size_limit(1 << 26)
    rows = []
    for r in csv.DictReader(io.StringIO(m.text(path))):
        answer = r["Response"].strip().strip('"').strip()
        if not english(answer) or len(answer) < 20:
            continue
        label = "harmful" if r["label"] == "1" else "safe"
        register = "compliance" if label == "harmful" else "refusal-or-deflection"
        rows.append(pair(questions[r["question"]], answer, label, source, register, question=r["question"]))
    out = []
    for label in ("harmful", "safe"):
        out += shared.sample([r for r in rows if r["label"] == label], per_label, f"{source}:{label}")
    return out


def ex_gptfuzz_fit(m):
    return _gptfuzz(m, "datasets/responses_labeled/train.csv", "gptfuzz", 300)


def ex_gptfuzz_heldout(m):
    return _gptfuzz(m, "datasets/responses_labeled/evaluate.csv", "gptfuzz-heldout-questions", 200)


def ex_gsm8k_answers(m):
    lines = m.text("grade_school_math/data/train.jsonl").splitlines()
    rows = []
    for x in lines:
        d = json.loads(x)
        answer = re.sub(r"<<[^>]*>>", "", d["answer"]).replace("#### ", "The answer is ")
        rows.append(pair(d["question"], answer, "safe", "gsm8k-answers", "math"))
    return shared.sample(rows, 150, "gsm8k-answers")


def ex_humaneval_solutions(m):
    rows = []
    for x in gzip.decompress(m.read("data/HumanEval.jsonl.gz")).decode().splitlines():
        d = json.loads(x)
        rows.append(pair(d["prompt"], d["prompt"] + d["canonical_solution"], "safe", "humaneval-solutions", "code"))
    return shared.sample(rows, 150, "humaneval-solutions")


def ex_truthfulqa_answers(m):
    reader = csv.DictReader(io.StringIO(m.text("datasets/TruthfulQA.csv")))
    rows = [pair(r["Question"], r["Best Answer"], "safe", "truthfulqa-answers", "short-answer") for r in reader]
    return shared.sample(rows, 200, "truthfulqa-answers")


def ex_selfinstruct_answers(m):
    rows = []
    for line in m.text("data/seed_tasks.jsonl").splitlines():
        d = json.loads(line)
        inst = d["instances"][0] if d.get("instances") else {}
        prompt = d["instruction"] + (f"\n{inst['input']}" if inst.get("input") else "")
        if inst.get("output", "").strip():
            rows.append(pair(prompt, inst["output"], "safe", "selfinstruct-answers", "instruction"))
    return rows


def _pubmedqa_answer(d: dict) -> str:
    """The decision, the evidence (the abstract's sections) and the conclusion: a long answer, as
    long as the harmful answers are, so that length is no harm signal."""
    return " ".join([f"{d['final_decision'].capitalize()}.", *d["CONTEXTS"], d["LONG_ANSWER"]])


def ex_pubmedqa_answers(m):
    data = json.loads(m.text("data/ori_pqal.json"))
    rows = [
        pair(
            d["QUESTION"],
            _pubmedqa_answer(d),
            "safe",
            "pubmedqa-answers",
            "sensitive-answer",
            category="medical",
        )
        for _, d in sorted(data.items())
    ]
    return shared.sample(rows, 150, "pubmedqa-answers")


def ex_medquad_answers(m):
    chosen, blobs = shared.medquad_documents(m, 30, "medquad-answers")
    rows = []
    for p in chosen:
        for qa in ET.fromstring(blobs[p]).iter("QAPair"):
            q, a = qa.findtext("Question"), qa.findtext("Answer")
            if q and a and a.strip():
                rows.append(pair(q, a, "safe", "medquad-answers", "sensitive-answer", category="medical"))
                break  # the first answered question of each document
    return shared.sample(rows, 200, "medquad-answers")


def ex_fastchat_reference(m):
    rows = []
    for bench in ("mt_bench", "vicuna_bench"):
        base = f"fastchat/llm_judge/data/{bench}"
        questions = {json.loads(x)["question_id"]: json.loads(x) for x in m.text(f"{base}/question.jsonl").splitlines()}
        for x in m.text(f"{base}/reference_answer/gpt-4.jsonl").splitlines():
            d = json.loads(x)
            q = questions.get(d["question_id"])
            answer = d["choices"][0]["turns"][0]
            if q and answer.strip():
                rows.append(
                    pair(q["turns"][0], answer, "safe", "fastchat-reference", "answer", category=q.get("category"))
                )
    return rows


# a conversational refusal: the assistant declines or steers away
_REFUSAL = re.compile(
    r"\b(I['’]m sorry|I am sorry|I can['’]t|I cannot|I won['’]t|I will not|I['’]m not (?:able|comfortable|going)|"
    r"I don['’]t (?:think I should|feel comfortable|want to help)|not something I)",
    re.IGNORECASE,
)


def ex_hh_refusals(m):
    rows = []
    for line in gzip.decompress(m.read("harmless-base/test.jsonl.gz")).decode().splitlines():
        turns = re.split(r"\n\n(Human|Assistant): ", "\n\n" + json.loads(line)["chosen"].strip())[1:]
        if len(turns) != 4:  # one exchange: a request and its answer
            continue
        (_, request), (_, answer) = zip(turns[::2], turns[1::2], strict=True)
        if _REFUSAL.search(answer):
            rows.append(pair(request, answer, "safe", "hh-rlhf-refusals", "conversational-refusal"))
    return rows


SOURCES = {  # id: (side, repository, path, licence, extractor)
    "gptfuzz": ("fit", "sherdencooper/GPTFuzz", "datasets/responses_labeled/train.csv", "MIT", ex_gptfuzz_fit),
    "gsm8k-answers": ("fit", "openai/grade-school-math", "grade_school_math/data/train.jsonl", "MIT", ex_gsm8k_answers),
    "humaneval-solutions": ("fit", "openai/human-eval", "data/HumanEval.jsonl.gz", "MIT", ex_humaneval_solutions),
    "truthfulqa-answers": (
        "fit",
        "benedictflorance/truthfulqa_experiments",
        "datasets/TruthfulQA.csv",
        "Apache-2.0",
        ex_truthfulqa_answers,
    ),
    "selfinstruct-answers": (
        "fit",
        "yizhongw/self-instruct",
        "data/seed_tasks.jsonl",
        "Apache-2.0",
        ex_selfinstruct_answers,
    ),
    "pubmedqa-answers": ("fit", "pubmedqa/pubmedqa", "data/ori_pqal.json", "MIT", ex_pubmedqa_answers),
    "gptfuzz-heldout-questions": (
        "eval",
        "sherdencooper/GPTFuzz",
        "datasets/responses_labeled/evaluate.csv",
        "MIT",
        ex_gptfuzz_heldout,
    ),
    "medquad-answers": ("eval", "abachaa/MedQuAD", "*/*.xml", "CC-BY-4.0", ex_medquad_answers),
    "fastchat-reference": (
        "eval",
        "lm-sys/FastChat",
        "fastchat/llm_judge/data/{mt_bench,vicuna_bench}/reference_answer/gpt-4.jsonl",
        "Apache-2.0",
        ex_fastchat_reference,
    ),
    "hh-rlhf-refusals": ("eval", "anthropics/hh-rlhf", "harmless-base/test.jsonl.gz", "MIT", ex_hh_refusals),
}


def build(mirrors: Path, out: Path) -> None:
    seen: set[str] = set()
    fitted: set[str] = set()
    manifest = {}
    for sid, (side, repo, path, licence, fn) in SOURCES.items():  # fit sources first
        m = mirror(mirrors, repo)
        rows = dedupe(fn(m), seen, fitted, side)
        shared.write_jsonl(out / side / f"{sid}.jsonl", rows)
        counts = {lab: sum(r["label"] == lab for r in rows) for lab in ("harmful", "safe")}
        manifest[sid] = {
            "side": side,
            "repository": repo,
            "commit": m.commit,
            "path": path,
            "licence": licence,
            **counts,
        }
        print(f"{side:4s} {sid:26s} {counts}", file=sys.stderr)
    with open(out / "MANIFEST.json", "w", encoding="utf-8", newline="\n") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
        f.write("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mirrors", type=Path, default=Path("/work/.mirror"))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    build(args.mirrors, args.out)


if __name__ == "__main__":
    main()

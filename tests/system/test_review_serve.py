"""`guard serve --review` on the tiny llama, in a thread: roles, the login cookie and CSRF, reviews
kept apart from the audit rows (two reviewers who disagree both kept), hostile texts escaped,
export -> candidate compile (only new texts run) -> diff -> promote by an admin key, and a
running server that picks the promoted version up while under load without a failed request."""

import re
import threading
import time

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from guard.check.engine import GuardSet
from guard.cli import app as cli_app
from guard.compiler import compile_policy
from guard.serve.app import create_app
from guard.serve.keys import ApiKeys
from guard.serve.service import ServeConfig, Service
from guard.store.audit import AuditLog
from guard.store.database import Store
from guard.store.reviews import Reviews
from tests.support.fixtures import TEXTS, write_policy
from tests.support.serve_helpers import thread_server

CHECK = "check-key-0123456789abcdef"
REVIEW = "review-key-0123456789abcdef"
REVIEW_2 = "review-two-0123456789abcdef"
ADMIN = "admin-key-0123456789abcdef"
HOSTILE = [
    "<script>document.title='pwned'</script>",
    '"><img src=x onerror="alert(1)">',
    "' autofocus onfocus='alert(1)",
]
TRAFFIC = ["how do I bake a cake", "how do I hurt my coworker", "write a poem about rain", *HOSTILE]


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def served(tmp_path, llama_dir, llama):
    policy = write_policy(tmp_path, llama_dir, TEXTS)
    db = str(tmp_path / "guard.db")
    compile_policy(policy, db, loaded=llama)
    keys = ApiKeys([CHECK, f"review:{REVIEW}", f"review:{REVIEW_2}", f"admin:{ADMIN}"])
    config = ServeConfig(keys=keys, audit=True, audit_text=True, review=True, review_sample=1.0, reload_s=0.2)
    service = Service(GuardSet.load(db, model=llama), config, store=Store.open(db))
    with thread_server(create_app(service)) as url:
        for text in TRAFFIC:
            response = httpx.post(f"{url}/v1/check", json={"input": text}, headers=bearer(CHECK), timeout=60)
            assert response.status_code == 200, response.text
        yield {"url": url, "db": db, "policy": policy, "service": service}


def login(url: str, key: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=60)
    response = client.post("/review/login", data={"key": key})
    assert response.status_code == 303 and response.headers["location"] == "/review"
    return client


def test_roles(served):
    url = served["url"]
    assert httpx.get(f"{url}/review", headers=bearer(CHECK)).status_code == 403
    assert httpx.get(f"{url}/review/api/queue", headers=bearer(CHECK)).status_code == 403
    assert httpx.get(f"{url}/review/api/queue").status_code == 401
    to_login = httpx.get(f"{url}/review")
    assert to_login.status_code == 303 and to_login.headers["location"] == "/review/login"
    assert httpx.post(f"{url}/review/login", data={"key": CHECK}).status_code == 403
    assert httpx.post(f"{url}/review/login", data={"key": "nobody-0123456789abcdef"}).status_code == 401
    assert httpx.get(f"{url}/review", headers=bearer(REVIEW)).status_code == 200
    assert httpx.post(f"{url}/v1/check", json={"input": "hi"}, headers=bearer(REVIEW), timeout=60).status_code == 200
    promote = {"policy": "tiny", "version": "1"}
    assert httpx.post(f"{url}/review/api/promote", json=promote, headers=bearer(REVIEW)).status_code == 403


def test_page_escapes_hostile_texts_and_forms_need_the_csrf_token(served):
    url, db = served["url"], served["db"]
    client = login(url, REVIEW)
    cookie = client.post("/review/login", data={"key": REVIEW}).headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/review" in cookie
    page = client.get("/review")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'nonce-" in csp and "default-src 'none'" in csp
    html = page.text
    assert html.count("<script") == 1  # the page's own
    assert "<img" not in html and 'onerror="alert' not in html and "' autofocus" not in html
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in html
    assert len(re.findall(r"<section class=.item.", html)) == len(set(TRAFFIC))

    before = [row.to_dict() for row in AuditLog(Store.open(db)).query()]
    audit_id = int(re.search(r'id="item-(\d+)"', html)[1])
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', html)[1]
    refused = client.post(f"/review/items/{audit_id}", data={"action": "correct:benign"})
    assert refused.status_code == 403
    forged = client.post(f"/review/items/{audit_id}", data={"action": "correct:benign", "csrf": "0" * 32})
    assert forged.status_code == 403
    done = client.post(f"/review/items/{audit_id}", data={"action": "correct:benign", "csrf": token, "back": "label=x"})
    assert done.status_code == 303 and done.headers["location"] == "/review?label=x"
    # a second reviewer disagrees, through the JSON API: both kept
    other = httpx.post(
        f"{url}/review/api/items/{audit_id}", json={"action": "correct", "label": "harmful"}, headers=bearer(REVIEW_2)
    )
    assert other.status_code == 200, other.text
    bad = httpx.post(
        f"{url}/review/api/items/{audit_id}", json={"action": "correct", "label": "nope"}, headers=bearer(REVIEW_2)
    )
    assert bad.status_code == 400 and "not a label" in bad.json()["error"]["message"]
    reviews = Reviews(Store.open(db))
    assert [(r.action, r.label, r.role) for r in reviews.all("tiny")] == [
        ("correct", "benign", "review"),
        ("correct", "harmful", "review"),
    ]
    assert len({r.reviewer for r in reviews.all("tiny")}) == 2
    assert [row.to_dict() for row in AuditLog(Store.open(db)).query()] == before  # audit rows untouched
    assert f'id="item-{audit_id}"' not in client.get("/review").text  # done, for this reviewer
    assert f'id="item-{audit_id}"' in httpx.get(f"{url}/review", headers=bearer(ADMIN)).text  # not for another
    assert [a["action"] for a in reviews.staff_actions()] == ["login", "login"]
    (figures,) = httpx.get(f"{url}/review/api/stats", headers=bearer(REVIEW)).json()["policies"]
    assert figures["verdicts"] == len(TRAFFIC) and figures["reviewed"]["k"] == 1 and figures["ties"] == 1
    assert httpx.get(f"{url}/review/api/stats", headers=bearer(CHECK)).status_code == 403
    assert 'id="stats"' in client.get("/review/stats").text


def test_each_item_shows_the_nearest_exemplars_that_explain_finds(served, llama):
    """With --review the audit row keeps the nearest exemplars at the top heads, the same as the
    library's `explain` finds for the same text (`guard check --explain`), and the page shows them."""
    from html import escape

    url, db = served["url"], served["db"]
    items = Reviews(Store.open(db)).queue(sample_rate=1.0)  # every row, with its audit id
    assert sorted(item.text for item in items) == sorted(TRAFFIC)
    guards = GuardSet.load(db, model=llama)
    html = login(url, REVIEW).get("/review").text
    for item in items:
        explained = guards.check(item.text, explain=True)[item.policy].explanation["nearest_exemplars"]
        assert [len(head["exemplars"]) for head in item.nearest] == [3, 3, 3]
        for stored, expected in zip(item.nearest, explained, strict=True):
            assert {k: v for k, v in stored.items() if k != "exemplars"} == {
                k: v for k, v in expected.items() if k != "exemplars"
            }
            assert [(e["index"], e["text"], e["label"]) for e in stored["exemplars"]] == [
                (e["index"], e["text"], e["label"]) for e in expected["exemplars"]
            ]
            for got, want in zip(stored["exemplars"], expected["exemplars"]):
                assert got["similarity"] == pytest.approx(want["similarity"], abs=1e-5)  # one batch vs another
        section = re.search(rf'<section class="item" id="item-{item.audit_id}">(.*?)</section>', html, re.S)[1]
        closest = max((e for head in item.nearest for e in head["exemplars"]), key=lambda e: e["similarity"])
        assert 'class="nearest"' in section and escape(closest["text"]) in section


def test_corrections_become_a_candidate_that_a_running_server_picks_up(served, tmp_path, llama):
    url, db, service = served["url"], served["db"], served["service"]
    store = Store.open(db)
    queue = httpx.get(f"{url}/review/api/queue", headers=bearer(ADMIN)).json()["items"]
    for item in queue:  # the admin relabels every reviewed text the other way
        label = "benign" if item["label"] == "harmful" else "harmful"
        response = httpx.post(
            f"{url}/review/api/items/{item['audit_id']}",
            json={"action": "correct", "label": label},
            headers=bearer(ADMIN),
        )
        assert response.status_code == 200
    runner = CliRunner()
    exported = runner.invoke(cli_app, ["review", "export", "tiny", "--db", db, "--hold-out", "0"])
    assert exported.exit_code == 0, exported.output
    lines = [line for line in exported.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == len(queue)
    (tmp_path / "reviews.jsonl").write_text("\n".join(lines) + "\n")
    doc = yaml.safe_load(served["policy"].read_text())
    doc["exemplars"].append({"from": "reviews.jsonl"})
    candidate_policy = tmp_path / "candidate.yaml"
    candidate_policy.write_text(yaml.safe_dump(doc))
    report = compile_policy(candidate_policy, db, loaded=llama, candidate=True)
    new_texts = {item["text"] for item in queue} - {t for texts in TEXTS.values() for t in texts}
    assert report.computed == len(new_texts) and report.cached == report.exemplars - len(new_texts)
    old_version = store.load_artifact("tiny").version  # still the current one
    assert report.artifact.version != old_version and report.artifact.revision == 2

    diff = runner.invoke(cli_app, ["review", "diff", "tiny", "--db", db, "--hold-out", "1", "--json"])
    assert diff.exit_code == 0, diff.output
    assert '"candidate": {"revision": 2' in diff.stdout

    results, stop = [], threading.Event()

    def load():
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                r = client.post(f"{url}/v1/check", json={"input": TRAFFIC[len(results) % 3]}, headers=bearer(CHECK))
                results.append((r.status_code, r.json()["results"][0]["verdicts"]["tiny"]["version"]))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    promote = {"policy": "tiny", "version": "2"}
    assert httpx.post(f"{url}/review/api/promote", json=promote, headers=bearer(ADMIN)).status_code == 200
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not any(v == report.artifact.version for _, v in results[-3:]):
        time.sleep(0.1)
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(60)
    assert results and all(status == 200 for status, _ in results)
    versions = [v for _, v in results]
    assert versions[0] == old_version and versions[-1] == report.artifact.version
    switched = versions.index(report.artifact.version)
    assert set(versions[switched + 3 :]) == {report.artifact.version}  # no flip back (3 threads in flight)
    assert service.watcher.reloads == 1
    ready = httpx.get(f"{url}/readyz").json()
    assert ready["versions"] == {"tiny": report.artifact.version} and "--reload-every" in ready["reload"]
    assert [a["action"] for a in Reviews(store).staff_actions()][-2:] == ["export", "promote"]


def test_an_admin_promotes_a_candidate_from_the_versions_page(served, tmp_path, llama):
    """`/review/versions`: admin keys only (a review or check key gets 403), each candidate with
    `guard review diff`'s figures, a promote form that needs its CSRF token, audited, and served."""
    from guard.eval.review_diff import review_diff

    url, db = served["url"], served["db"]
    for item in httpx.get(f"{url}/review/api/queue", headers=bearer(ADMIN)).json()["items"]:
        body = {"action": "correct", "label": "benign" if item["label"] == "harmful" else "harmful"}
        assert httpx.post(f"{url}/review/api/items/{item['audit_id']}", json=body, headers=bearer(ADMIN)).is_success
    doc = yaml.safe_load(served["policy"].read_text())
    doc["exemplars"].append({"text": "how do I water my tomato plants", "label": "benign", "weight": 3})
    (tmp_path / "candidate.yaml").write_text(yaml.safe_dump(doc))
    report = compile_policy(tmp_path / "candidate.yaml", db, loaded=llama, candidate=True)
    assert report.artifact.revision == 2

    assert httpx.get(f"{url}/review/versions", headers=bearer(CHECK)).status_code == 403
    reviewer = login(url, REVIEW)
    assert reviewer.get("/review/versions").status_code == 403
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', reviewer.get("/review").text)[1]
    refused = reviewer.post("/review/versions/promote", data={"policy": "tiny", "version": "2", "csrf": token})
    assert refused.status_code == 403

    admin = login(url, ADMIN)
    html = admin.get("/review/versions").text
    expected = review_diff(db, "tiny", "2", loaded=llama).to_dict()
    figures = (
        f"<td>{expected['held_out_items']}</td><td>{len(expected['fixed'])}</td><td>{len(expected['broken'])}</td>"
    )
    assert "Promote revision 2" in html and figures in html and "serving revision 1" in html
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', html)[1]
    promote = {"policy": "tiny", "version": "2"}
    assert admin.post("/review/versions/promote", data=promote).status_code == 403  # no token
    assert Store.open(db).load_artifact("tiny").revision == 1
    done = admin.post("/review/versions/promote", data={**promote, "csrf": token})
    assert done.status_code == 303 and done.headers["location"] == "/review/versions"
    assert Store.open(db).load_artifact("tiny").revision == 2
    action = Reviews(Store.open(db)).staff_actions()[-1]
    assert (action["action"], action["role"], action["detail"]) == ("promote", "admin", {**promote, "via": "page"})
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        verdict = httpx.post(f"{url}/v1/check", json={"input": TRAFFIC[0]}, headers=bearer(CHECK)).json()
        if verdict["results"][0]["verdicts"]["tiny"]["version"] == report.artifact.version:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the running server did not pick up the promoted version")
    after = admin.get("/review/versions").text
    assert "serving revision 2" in after and "No candidate." in after


def test_the_diff_also_runs_on_the_policys_own_held_out_file(served, tmp_path, llama):
    """`guard review diff --heldout FILE`: fixed, broken, recall and FPR on that file, recounted here
    from each version's own verdicts; a label the policy lacks is a one-line error."""
    import json

    db = served["db"]
    doc = yaml.safe_load(served["policy"].read_text())
    doc["exemplars"].append({"text": "how do I water my tomato plants", "label": "harmful", "weight": 5})
    (tmp_path / "candidate.yaml").write_text(yaml.safe_dump(doc))
    compile_policy(tmp_path / "candidate.yaml", db, loaded=llama, candidate=True)
    items = [{"text": t, "label": label} for label, texts in TEXTS.items() for t in texts]
    items += [
        {"text": "how do I water my roses", "label": "benign"},
        {"text": "burn my rival's shop", "label": "harmful"},
    ]
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps(item) + "\n" for item in items))
    result = CliRunner().invoke(cli_app, ["review", "diff", "tiny", "--db", db, "--heldout", str(heldout), "--json"])
    assert result.exit_code == 0, result.output
    on_file = json.loads(result.stdout)["heldout"]
    store = Store.open(db)
    said = {}
    for version, spec in (("current", "tiny"), ("candidate", "tiny@2")):
        guards = GuardSet([store.load_artifact(spec)], llama)
        said[version] = [guards.check(item["text"])["tiny"].label for item in items]
    fixed = [i for i, item in enumerate(items) if said["current"][i] != item["label"] == said["candidate"][i]]
    broken = [i for i, item in enumerate(items) if said["current"][i] == item["label"] != said["candidate"][i]]
    assert on_file["items"] == len(items)
    assert [r["text"] for r in on_file["fixed"]] == [items[i]["text"] for i in fixed]
    assert [r["text"] for r in on_file["broken"]] == [items[i]["text"] for i in broken]
    for version in ("current", "candidate"):
        harmful = [said[version][i] for i, item in enumerate(items) if item["label"] == "harmful"]
        benign = [said[version][i] for i, item in enumerate(items) if item["label"] == "benign"]
        rates = on_file["rates"][version]
        assert (rates["recall"]["k"], rates["recall"]["n"]) == (harmful.count("harmful"), len(harmful))
        assert (rates["fpr"]["k"], rates["fpr"]["n"]) == (benign.count("harmful"), len(benign))
    text = CliRunner().invoke(cli_app, ["review", "diff", "tiny", "--db", db, "--heldout", str(heldout)])
    assert text.exit_code == 0 and f"on {heldout} ({len(items)} items)" in text.stdout
    heldout.write_text(json.dumps({"text": "x", "label": "spam"}) + "\n")
    bad = CliRunner().invoke(cli_app, ["review", "diff", "tiny", "--db", db, "--heldout", str(heldout)])
    assert bad.exit_code == 2 and "label 'spam' is not one of: harmful, benign" in bad.stderr
    assert "Traceback" not in bad.output


def test_review_options_are_checked_before_anything_loads(tmp_path):
    runner = CliRunner()
    db = str(tmp_path / "none.db")
    no_text = runner.invoke(cli_app, ["serve", "--db", db, "--audit", "--review", "--api-key", f"review:{REVIEW}"])
    assert no_text.exit_code == 2 and "--audit-text" in no_text.stderr
    no_key = runner.invoke(cli_app, ["serve", "--db", db, "--audit", "--audit-text", "--review", "--api-key", CHECK])
    assert no_key.exit_code == 2 and "review or admin key" in no_key.stderr
    assert not (tmp_path / "none.db").exists()

"""The review loop's rules without a model: key roles, signed sessions and CSRF tokens, the
disagreement rule (against a naive re-statement of it), the export's split, and the page's escaping
of hostile texts (parsed back with html.parser: no element or attribute a text could add)."""

import itertools
import random
import time
from collections import Counter
from html.parser import HTMLParser

import pytest

from guard.errors import GuardError
from guard.serve.keys import ApiKeys, allows, load_keys, split_role
from guard.serve.review import Sessions
from guard.serve.review_page import queue_page, votes_svg
from guard.store.reviews import REVIEW_WEIGHT, QueueItem, Review, decide, export, held_out

CHECK = "check-key-0123456789abcdef"
REVIEW = "review-key-0123456789abcdef"
ADMIN = "admin-key-0123456789abcdef"


def test_key_roles_from_every_source(tmp_path):
    assert split_role(CHECK) == ("check", CHECK)
    assert split_role(f"review:{REVIEW}") == ("review", REVIEW)
    assert split_role("other:" + CHECK) == ("check", "other:" + CHECK)  # not a role: the whole entry is the key
    key_file = tmp_path / "keys"
    key_file.write_text(f"# staff\nadmin:{ADMIN}\n")
    keys = load_keys([CHECK], str(key_file), env={"GUARD_API_KEYS": f"review:{REVIEW}"})
    assert keys.identify(f"Bearer {CHECK}")[1] == "check"
    assert keys.identify(f"Bearer {REVIEW}")[1] == "review"
    assert keys.identify(f"Bearer {ADMIN}")[1] == "admin"
    assert keys.identify(f"Bearer review:{REVIEW}") is None  # the role is not part of the key
    assert keys.check(f"Bearer {REVIEW}") == keys.identify(f"Bearer {REVIEW}")[0]
    assert keys.roles() == {"check", "review", "admin"}
    # a key listed twice keeps its highest role, whatever the order
    assert ApiKeys([f"admin:{ADMIN}", ADMIN]).identify(f"Bearer {ADMIN}")[1] == "admin"
    assert ApiKeys([ADMIN, f"review:{ADMIN}"]).identify(f"Bearer {ADMIN}")[1] == "review"
    with pytest.raises(GuardError, match="characters"):
        ApiKeys(["review:short"])


def test_roles_are_ordered():
    table = {
        (role, needed): allows(role, needed)
        for role in ("check", "review", "admin")
        for needed in ("check", "review", "admin")
    }
    assert [need for (role, need), ok in table.items() if ok and role == "check"] == ["check"]
    assert [need for (role, need), ok in table.items() if ok and role == "review"] == ["check", "review"]
    assert all(table[("admin", need)] for need in ("check", "review", "admin"))
    assert not allows(None, "check") and not allows("root", "check")


def test_sessions_are_signed_bound_to_their_key_and_expire():
    keys = ApiKeys([CHECK, f"review:{REVIEW}"])
    sessions = Sessions(keys, b"s" * 32)
    review_id = keys.identify(f"Bearer {REVIEW}")[0]
    cookie = sessions.make(review_id, "review")
    assert sessions.read(cookie).role == "review"
    key_id, role, expires, mac = cookie.split("|")
    assert sessions.read(f"{key_id}|admin|{expires}|{mac}") is None  # a role raised by hand
    assert sessions.read(cookie, now=int(expires) + 1) is None  # expired
    assert Sessions(keys, b"t" * 32).read(cookie) is None  # another secret
    assert Sessions(ApiKeys([CHECK]), b"s" * 32).read(cookie) is None  # the key was removed
    other = sessions.make(review_id, "review", now=time.time() + 1)
    assert sessions.csrf(cookie) != sessions.csrf(other) and len(sessions.csrf(cookie)) == 32


def review(i, reviewer, role, label, digest="d1", action="correct", text="t"):
    return Review(
        id=i,
        created_at=f"2026-12-01T00:00:{i:02d}.000000+00:00",
        reviewer=reviewer,
        role=role,
        audit_id=1,
        policy="p",
        policy_version="v",
        input_sha256=digest,
        input_text=text,
        model_label="harmful",
        action=action,
        label=label,
        note=None,
    )


def naive_decision(reviews):
    """The rule as the docs state it, written again plainly."""
    labelled = [r for r in reviews if r.action in ("confirm", "correct")]
    admins = sorted((r for r in labelled if r.role == "admin"), key=lambda r: r.created_at)
    if admins:
        return admins[-1].label
    latest = {}
    for r in sorted(labelled, key=lambda r: r.created_at):
        latest[r.reviewer] = r.label
    counts = Counter(latest.values()).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return None
    return counts[0][0]


def test_disagreements_follow_the_stated_rule():
    cases = {
        "admin overrides a majority": [
            review(1, "a", "review", "harmful"),
            review(2, "b", "review", "harmful"),
            review(3, "z", "admin", "benign"),
        ],
        "latest admin wins": [review(1, "z", "admin", "benign"), review(2, "y", "admin", "harmful")],
        "majority": [
            review(1, "a", "review", "benign"),
            review(2, "b", "review", "benign"),
            review(3, "c", "review", "harmful"),
        ],
        "tie": [review(1, "a", "review", "benign"), review(2, "b", "review", "harmful")],
        "a reviewer's latest label counts once": [
            review(1, "a", "review", "harmful"),
            review(2, "a", "review", "benign"),
            review(3, "a", "review", "benign"),
            review(4, "b", "review", "harmful"),
        ],
        "skips and notes give no label": [
            review(1, "a", "review", None, action="skip"),
            review(2, "b", "review", "benign"),
        ],
    }
    expected = {
        "admin overrides a majority": ("benign", "admin"),
        "latest admin wins": ("harmful", "admin"),
        "majority": ("benign", "majority"),
        "tie": (None, "tie"),
        "a reviewer's latest label counts once": (None, "tie"),
        "skips and notes give no label": ("benign", "majority"),
    }
    for name, reviews in cases.items():
        (decision,) = decide(reviews)
        assert (decision.label, decision.rule) == expected[name], name
        assert decision.label == naive_decision(reviews), name


def test_disagreement_rule_matches_the_naive_one_on_random_histories():
    rng = random.Random(0)
    for _ in range(300):
        reviews = [
            review(
                i,
                rng.choice("abcd"),
                rng.choice(["review", "review", "admin"]),
                rng.choice(["harmful", "benign", "other"]),
            )
            for i in range(1, rng.randint(2, 9))
        ]
        (decision,) = decide(reviews)
        assert decision.label == naive_decision(reviews)


def test_export_holds_out_a_stable_share_and_leaves_ties_out():
    digests = [f"{i:064x}" for i in range(400)]
    reviews = [review(i + 1, "a", "review", "benign", digest=d) for i, d in enumerate(digests)]
    reviews += [review(500, "a", "review", "benign", digest="tie"), review(501, "b", "review", "harmful", digest="tie")]
    reviews.append(review(502, "a", "review", "benign", digest="notext", text=None))
    done = export(decide(reviews))
    assert len(done.ties) == 1 and done.without_text == 1
    assert len(done.lines) + len(done.held_out) == 400
    assert 0.12 < len(done.held_out) / 400 < 0.28  # about the 20% asked for
    assert {d.input_sha256 for d in done.held_out} == {d for d in digests if held_out(d)}
    line = {"text": "t", "label": "benign", "source": "reviews", "rule": "majority", "weight": REVIEW_WEIGHT}
    assert all(got == line for got in done.lines)
    assert {got["weight"] for got in export(decide(reviews), weight=2.5).lines} == {2.5}
    assert len(export(decide(reviews), hold_out=0).lines) == 400


HOSTILE = [
    "<script>window.pwned = 1</script>",
    '"><img src=x onerror="window.pwned=1">',
    "' onmouseover='window.pwned=1",
    "</pre></section><script>alert(1)</script>",
    "<svg onload=alert(1)>",
    "&lt;already escaped&gt; & <b>bold</b>",
]


class Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attributes, self.text = [], set(), []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes |= {name for name, _ in attrs}

    def handle_data(self, data):
        self.text.append(data)


def item(i, text, label="harmful", votes=None):
    return QueueItem(
        audit_id=i,
        created_at="2026-12-01T00:00:00",
        policy="p",
        policy_version="v1",
        text=text,
        label=label,
        flagged=True,
        scores={label: 0.6},
        votes=votes or {label: 12, "benign": 8},
        uncertain=True,
        reason="uncertain",
    )


def test_hostile_texts_render_inert():
    hostile_label = '<script>x</script>"'
    items = [item(i, text) for i, text in enumerate(HOSTILE, start=1)]
    html = queue_page(
        items,
        {"p": ["harmful", "benign", hostile_label]},
        csrf="tok",
        filters={"since": '"><script>1</script>'},
        reviewer="r",
        role="review",
        nonce="abc",
    )
    clean = queue_page(
        [item(1, "hello")],
        {"p": ["harmful", "benign"]},
        csrf="tok",
        filters={},
        reviewer="r",
        role="review",
        nonce="abc",
    )
    parsed, baseline = Elements(), Elements()
    parsed.feed(html)
    baseline.feed(clean)
    assert parsed.tags.count("script") == 1 and "img" not in parsed.tags and parsed.tags.count("svg") == len(HOSTILE)
    assert parsed.attributes == baseline.attributes  # no onerror, onload, onmouseover, src
    text = "".join(parsed.text)
    for hostile in HOSTILE:
        assert hostile in text  # shown as written, as text
    assert set(itertools.chain(parsed.tags)) == set(baseline.tags)


def test_votes_chart_draws_each_label():
    svg = votes_svg({"harmful": 15, "benign": 5}, ["harmful", "benign"])
    assert svg.startswith("<svg") and "15/20" in svg and "5/20" in svg
    assert 'width="120"' in svg and 'width="40"' in svg  # 160 px for all votes
    assert "no head votes" in votes_svg(None, ["harmful"])


def test_the_export_command_defaults_to_the_library_weight():
    """`guard review export --weight`'s default is REVIEW_WEIGHT (the CLI spells it out, so that its
    help shows it without importing the store)."""
    import inspect

    from guard.cli.review import export_command

    assert inspect.signature(export_command).parameters["weight"].default == REVIEW_WEIGHT

"""The review page's HTML, rendered on the server: the queue, the login form, the votes chart.

Every text that reaches the page (the audited inputs above all: a review page is an XSS target)
goes through `html.escape(..., quote=True)`, in element content and in attributes alike. The one
script and the one style sheet are inline and carry the response's CSP nonce (guard.serve.review
sends `script-src 'nonce-...'`), so nothing is fetched: the page works offline. Keys: `j`/`k`
move between items, `c` confirms, `1`..`9` correct to the policy's label of that number, `s`
skips, `n` goes to the note field (Enter adds the note, Escape leaves it). Exemplar texts (the
nearest exemplars) are escaped the same way: a policy's data is not trusted HTML either.
"""

from __future__ import annotations

from html import escape
from urllib.parse import urlencode

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;max-width:60em;color:#222}
.item{border:1px solid #ccc;border-radius:6px;padding:.8em;margin:.8em 0}
.item.current{border-color:#06c;box-shadow:0 0 0 2px #06c3}
.text{white-space:pre-wrap;word-break:break-word;background:#f6f6f6;padding:.5em;margin:.3em 0}
.flagged{color:#a00;font-weight:bold}.allowed{color:#070;font-weight:bold}
.meta{color:#666;font-size:12px}form.inline{display:inline}button{margin:.15em}
.nearest{margin:.3em 0;padding-left:1.2em;font-size:13px}.nearest li{word-break:break-word}
kbd{border:1px solid #aaa;border-radius:3px;padding:0 .3em;font-size:12px}
"""

SCRIPT = """
(function () {
  var items = Array.prototype.slice.call(document.querySelectorAll('.item'));
  var current = 0;
  function show(i) {
    if (!items.length) return;
    items[current].classList.remove('current');
    current = Math.max(0, Math.min(items.length - 1, i));
    items[current].classList.add('current');
    items[current].scrollIntoView({block: 'nearest'});
  }
  show(0);
  document.addEventListener('keydown', function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    var tag = e.target.tagName;
    if (tag === 'INPUT' || tag === 'TEXTAREA' || tag === 'SELECT') {
      if (e.key === 'Escape') e.target.blur();
      return;
    }
    if (!items.length) return;
    if (e.key === 'j') { show(current + 1); e.preventDefault(); return; }
    if (e.key === 'k') { show(current - 1); e.preventDefault(); return; }
    if (e.key === 'n') {
      var note = items[current].querySelector('input[name=note]');
      if (note) { note.focus(); e.preventDefault(); }
      return;
    }
    var buttons = items[current].querySelectorAll('button[data-key]');
    for (var k = 0; k < buttons.length; k++) {
      if (buttons[k].getAttribute('data-key') === e.key) { buttons[k].click(); e.preventDefault(); return; }
    }
  });
})();
"""


def page(title: str, body: str, nonce: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title>"
        f'<style nonce="{escape(nonce)}">{STYLE}</style></head>'
        f'<body>{body}<script nonce="{escape(nonce)}">{SCRIPT}</script></body></html>'
    )


def login_page(nonce: str, error: str | None = None) -> str:
    problem = f'<p class="flagged">{escape(error)}</p>' if error else ""
    body = (
        "<h1>guard review: sign in</h1>"
        f"{problem}"
        '<form method="post" action="/review/login">'
        '<label>Review or admin key <input type="password" name="key" autocomplete="off" autofocus></label> '
        '<button type="submit">Sign in</button></form>'
    )
    return page("guard review: sign in", body, nonce)


def votes_svg(votes: dict | None, labels: list[str]) -> str:
    """The heads' votes per label as a small horizontal bar chart (inline SVG)."""
    if not votes:
        return '<span class="meta">(no head votes recorded for this verdict)</span>'
    total = max(1, sum(votes.values()))
    names = labels + [name for name in votes if name not in labels]
    height = 18 * len(names) + 4
    rows = []
    for i, name in enumerate(names):
        count = int(votes.get(name, 0))
        width = round(160 * count / total)
        y = 18 * i + 2
        rows.append(
            f'<text x="0" y="{y + 12}" font-size="12">{escape(name)}</text>'
            f'<rect x="90" y="{y}" width="{width}" height="14" fill="#4a7fc1"></rect>'
            f'<text x="{95 + width}" y="{y + 12}" font-size="12">{count}/{total}</text>'
        )
    return (
        f'<svg class="votes" role="img" aria-label="head votes" width="300" height="{height}" '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(rows)}</svg>'
    )


SHOWN_NEIGHBOURS = 5  # distinct nearest exemplars an item shows


def nearest_list(nearest: list | None) -> str:
    """The exemplars closest to the input at the top heads (guard.check.explain, stored with the
    audit row), each once with its best similarity and the heads it is near at, closest first."""
    if not nearest:
        return ""
    found: dict[int, dict] = {}
    for head in nearest:
        for ex in head.get("exemplars", []):
            seen = found.setdefault(int(ex["index"]), {**ex, "similarity": float(ex["similarity"]), "heads": []})
            seen["similarity"] = max(seen["similarity"], float(ex["similarity"]))
            seen["heads"].append(int(head["rank"]))
    closest = sorted(found.values(), key=lambda ex: (-ex["similarity"], int(ex["index"])))[:SHOWN_NEIGHBOURS]
    rows = "".join(
        f'<li><span class="meta">{escape(str(ex["label"]))} · {ex["similarity"]:.2f} · '
        f"head{'s' if len(ex['heads']) > 1 else ''} {', '.join(str(h) for h in ex['heads'])}</span> "
        f"{escape(str(ex['text']))}</li>"
        for ex in closest
    )
    return f'<div class="meta">nearest exemplars</div><ul class="nearest">{rows}</ul>'


def _item(item, labels: list[str], csrf: str, back: str) -> str:
    verdict = "flagged" if item.flagged else "allowed"
    probability = item.scores.get(item.label)
    shown = "" if probability is None else f" P({escape(item.label)})={probability:.2f}"
    hidden = f'<input type="hidden" name="csrf" value="{escape(csrf)}"><input type="hidden" name="back" value="{escape(back)}">'
    action = f"/review/items/{int(item.audit_id)}"
    buttons = ['<button name="action" value="confirm" data-key="c">Confirm <kbd>c</kbd></button>']
    for number, label in enumerate(labels[:9], start=1):
        if label != item.label:
            buttons.append(
                f'<button name="action" value="correct:{escape(label)}" data-key="{number}">'
                f"Correct to {escape(label)} <kbd>{number}</kbd></button>"
            )
    buttons.append('<button name="action" value="skip" data-key="s">Skip <kbd>s</kbd></button>')
    return (
        f'<section class="item" id="item-{int(item.audit_id)}">'
        f'<div class="meta">#{int(item.audit_id)} · {escape(item.created_at[:19])} · {escape(item.policy)} '
        f"@ {escape(item.policy_version[:12])} · {escape(item.reason)}</div>"
        f'<pre class="text">{escape(item.text)}</pre>'
        f'<div><span class="{verdict}">{verdict}</span> as {escape(item.label)}{shown}</div>'
        f"{votes_svg(item.votes, labels)}{nearest_list(item.nearest)}"
        f'<form class="inline" method="post" action="{action}">{hidden}{"".join(buttons)}</form>'
        f'<form class="inline" method="post" action="{action}">{hidden}'
        '<input name="note" maxlength="2000" placeholder="note (n)">'
        '<button name="action" value="note">Add note</button></form></section>'
    )


def queue_page(
    items, labels: dict[str, list[str]], *, csrf: str, filters: dict, reviewer: str, role: str, nonce: str
) -> str:
    """The queue: the filters, then one section per item with its actions."""
    back = urlencode({k: v for k, v in filters.items() if v})
    options = "".join(
        f'<option value="{escape(name)}"{" selected" if filters.get("policy") == name else ""}>{escape(name)}</option>'
        for name in labels
    )
    every_label = sorted({label for names in labels.values() for label in names})
    label_options = "".join(
        f'<option value="{escape(name)}"{" selected" if filters.get("label") == name else ""}>{escape(name)}</option>'
        for name in every_label
    )
    header = (
        f'<h1>guard review</h1><p class="meta">signed in as {escape(reviewer)} ({escape(role)}) · '
        "keys: <kbd>j</kbd>/<kbd>k</kbd> move, <kbd>c</kbd> confirm, <kbd>1</kbd>-<kbd>9</kbd> correct, "
        '<kbd>s</kbd> skip, <kbd>n</kbd> note · <a href="/review/stats">stats</a> · '
        '<a href="/review/versions">versions</a> (admin)</p>'
        '<form method="get" action="/review">'
        f'<select name="policy"><option value="">every policy</option>{options}</select> '
        f'<select name="label"><option value="">every label</option>{label_options}</select> '
        f'<input name="since" placeholder="since: 12h, 7d, 2026-12-01" value="{escape(filters.get("since") or "")}"> '
        '<button type="submit">Filter</button></form>'
    )
    if not items:
        return page("guard review", header + '<p id="empty">Nothing to review.</p>', nonce)
    sections = "".join(_item(item, labels.get(item.policy, []), csrf, back) for item in items)
    return page("guard review", f'{header}<p class="meta">{len(items)} to review</p>{sections}', nonce)


def versions_page(policies: list[dict], *, csrf: str, nonce: str) -> str:
    """Admins' page: per policy its current revision, then each candidate (a newer revision not yet
    served) with `guard review diff`'s summary and a promote button (a CSRF-protected form)."""
    sections = []
    for entry in policies:
        current = entry["current"]
        rows = []
        for candidate in entry["candidates"]:
            summary, diff = candidate["summary"], candidate.get("diff")
            if diff is None:
                figures = f"<td colspan=5>{escape(candidate.get('error') or 'no diff')}</td>"
            else:
                rates = diff["rates"]
                figures = (
                    f"<td>{int(diff['held_out_items'])}</td><td>{len(diff['fixed'])}</td><td>{len(diff['broken'])}</td>"
                    f"<td>{_cell(rates['current']['recall'])} → {_cell(rates['candidate']['recall'])}</td>"
                    f"<td>{_cell(rates['current']['fpr'])} → {_cell(rates['candidate']['fpr'])}</td>"
                )
            form = (
                '<form class="inline" method="post" action="/review/versions/promote">'
                f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
                f'<input type="hidden" name="policy" value="{escape(entry["policy"])}">'
                f'<input type="hidden" name="version" value="{int(summary["revision"])}">'
                f'<button type="submit">Promote revision {int(summary["revision"])}</button></form>'
            )
            rows.append(
                f'<tr class="candidate"><td>{int(summary["revision"])}</td><td>{escape(summary["version"])}</td>'
                f"<td>{escape(str(summary['compiled'])[:19])}</td>{figures}<td>{form}</td></tr>"
            )
        head = "".join(
            f"<th>{name}</th>"
            for name in ("revision", "version", "compiled", "held-out reviewed", "fixed", "broken", "recall", "FPR", "")
        )
        table = f"<table><tr>{head}</tr>{''.join(rows)}</table>" if rows else "<p>No candidate.</p>"
        sections.append(
            f'<section class="policy-versions"><h2>{escape(entry["policy"])}</h2><p class="meta">serving revision '
            f"{int(current['revision'])} (version {escape(current['version'])})</p>{table}</section>"
        )
    body = (
        '<h1>guard review: versions</h1><p><a href="/review">the queue</a> · <a href="/review/stats">stats</a> · '
        "recall and FPR: current → candidate, on the reviewed items the export held out</p>" + "".join(sections)
    )
    return page("guard review: versions", body, nonce)


CHART_BUCKETS = 30  # the newest buckets a flag-rate chart draws


def flag_rate_svg(buckets: list[dict]) -> str:
    """The flag rate per time bucket as bars with their 95% Wilson intervals as whiskers (inline SVG:
    no script, nothing fetched)."""
    shown = buckets[-CHART_BUCKETS:]
    if not shown:
        return ""
    bar, gap, top, height = 16, 6, 10, 120
    width = max(160, 40 + len(shown) * (bar + gap))  # room for the first and last bucket names

    def y(value: float) -> float:
        return round(top + height * (1 - value), 1)

    parts = [
        f'<line x1="36" y1="{y(0)}" x2="{width}" y2="{y(0)}" stroke="#999"></line>',
        f'<text x="0" y="{y(1) + 4}" font-size="11">100%</text><text x="12" y="{y(0) + 4}" font-size="11">0%</text>',
    ]
    for i, b in enumerate(shown):
        rate = b["flag_rate"]
        x = 40 + i * (bar + gap)
        middle = x + bar / 2
        parts.append(
            f'<rect x="{x}" y="{y(rate["value"])}" width="{bar}" height="{round(height * rate["value"], 1)}" '
            f'fill="#c14a4a"><title>{escape(b["start"])}: {rate["value"]:.1%} ({rate["k"]}/{rate["n"]})</title></rect>'
            f'<line x1="{middle}" y1="{y(rate["low"])}" x2="{middle}" y2="{y(rate["high"])}" stroke="#222"></line>'
        )
    parts.append(f'<text x="40" y="{y(0) + 16}" font-size="11">{escape(shown[0]["start"])}</text>')
    if len(shown) > 1:
        parts.append(
            f'<text x="{width}" y="{y(0) + 16}" font-size="11" text-anchor="end">{escape(shown[-1]["start"])}</text>'
        )
    return (
        f'<svg class="flag-rate" role="img" aria-label="flag rate per time bucket" '
        f'width="{width + 4}" height="{top + height + 22}" xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>'
    )


def _cell(value: dict | None) -> str:
    if value is None:
        return "n/a"
    return f"{value['value']:.1%} [{value['low']:.1%}, {value['high']:.1%}] ({value['k']}/{value['n']})"


def _bucket_table(row: dict) -> str:
    names = sorted({name for b in row["buckets"] for name in b["labels"]})
    head = "".join(f"<th>{escape(n)}</th>" for n in names)
    lines = "".join(
        f"<tr><td>{escape(b['start'])}</td><td>{int(b['verdicts'])}</td><td>{_cell(b['flag_rate'])}</td>"
        + "".join(f"<td>{int(b['labels'].get(n, 0))} ({b['drift'].get(n, 0):+.1%})</td>" for n in names)
        + f"<td>{b['drift_total']:.1%}</td></tr>"
        for b in row["buckets"]
    )
    return (
        f'<table class="buckets"><tr><th>{escape(row["bucket"])}</th><th>verdicts</th><th>flag rate</th>{head}'
        f"<th>drift</th></tr>{lines}</table>"
    )


def stats_page(rows: list[dict], nonce: str, bucket: str = "day") -> str:
    """The per-policy figures of guard.eval.review_stats: a table, then per policy its flag rate per
    time bucket as a chart and a table of label counts with their drift from the first bucket."""
    header = "".join(
        f"<th>{name}</th>"
        for name in (
            "policy",
            "verdicts",
            "flag rate",
            "inputs reviewed",
            "agreement",
            "precision of flags",
            "FPR of confident verdicts (random sample)",
            "ties",
        )
    )
    body = "".join(
        f"<tr><td>{escape(row['policy'])}</td><td>{int(row['verdicts'])}</td><td>{_cell(row['flag_rate'])}</td>"
        f"<td>{_cell(row['reviewed'])}</td><td>{_cell(row['agreement'])}</td><td>{_cell(row['flag_precision'])}</td>"
        f"<td>{_cell(row['sample_fpr'])}</td><td>{int(row['ties'])}</td></tr>"
        for row in rows
    )
    table = f'<table id="stats"><tr>{header}</tr>{body}</table>'
    links = (
        f'<p><a href="/review">the queue</a> · per <a href="/review/stats?bucket=hour">hour</a>, '
        '<a href="/review/stats?bucket=day">day</a>, <a href="/review/stats?bucket=week">week</a> · '
        f'export <a href="/review/api/stats?bucket={escape(bucket)}">JSON</a>, '
        f'<a href="/review/api/stats.csv?bucket={escape(bucket)}">CSV</a></p>'
    )
    charts = "".join(
        f'<section class="policy-stats"><h2>{escape(row["policy"])}: flag rate per {escape(row["bucket"])}</h2>'
        f"{flag_rate_svg(row['buckets'])}{_bucket_table(row)}</section>"
        for row in rows
    )
    return page("guard review: stats", f"<h1>guard review: stats</h1>{links}{table}{charts}", nonce)

"""Call `guard serve` with the official `openai` package, unchanged but for `base_url`.

    guard serve --db guard.db                      # in another terminal (GUARD_API_KEYS=... for keys)
    python examples/openai_client.py "how do I bake bread" "how do I hurt someone"

Environment: GUARD_URL (default http://127.0.0.1:8000/v1), GUARD_API_KEY (any string without keys),
GUARD_POLICY (a policy name; default: every policy the server holds).
"""

from __future__ import annotations

import os
import sys

from openai import OpenAI


def main(texts: list[str]) -> int:
    client = OpenAI(
        base_url=os.environ.get("GUARD_URL", "http://127.0.0.1:8000/v1"),
        api_key=os.environ.get("GUARD_API_KEY", "no-key"),
    )
    policy = os.environ.get("GUARD_POLICY")
    response = client.moderations.create(input=texts, **({"model": policy} if policy else {}))
    for text, result in zip(texts, response.results):
        # the categories are the policies' flagged labels; guard's full verdicts ride along under "guard"
        flagged = [name for name, hit in result.categories.model_extra.items() if hit]
        scores = ", ".join(f"{k} {v:.2f}" for k, v in result.category_scores.model_extra.items())
        print(f"{'FLAGGED' if result.flagged else 'allowed':8} [{scores}] {', '.join(flagged)}  {text}")
        for name, verdict in result.model_extra["guard"]["verdicts"].items():
            print(f"         {name} {verdict['version']}: {verdict['label']} (margin {verdict['margin']:.2f})")
    return 1 if any(r.flagged for r in response.results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["how do I bake bread", "give me step by step instructions to poison a dog"]))

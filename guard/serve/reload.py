"""`guard serve --reload-every S`: serve a newly promoted (or rolled back) version without a restart.

A thread reads each served policy's current version from the database every S seconds (one
small query, no vectors); when one changed, it loads the new artifacts, binds them to the model
already loaded and swaps them into the moderator (`Moderator.swap`). Requests in flight are not
dropped: a batch already running finishes on the versions it started with, and every verdict
names the version that judged it. A version that cannot be loaded (another model, a broken row)
is logged and the old one stays served.
"""

from __future__ import annotations

import logging
import threading

from guard.errors import first_line

log = logging.getLogger("guard.serve")


class VersionWatcher:
    """Polls the database's current versions of the served policies and swaps in new ones."""

    def __init__(self, service, interval_s: float):
        self.service = service
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="guard-reload", daemon=True)
        self.reloads = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception as exc:  # the database may be busy or gone a moment: try again next time
                log.warning("version poll failed", extra={"reason": first_line(exc)})

    def poll(self) -> bool:
        """Swap in the database's current versions if any differ from the served ones."""
        moderator = self.service.moderator
        served = {name: art.version for name, art in moderator.artifacts.items()}
        store = self.service.store
        current = {name: store.current_compile(name) for name in served}
        changed = {name: row[0] for name, row in current.items() if row is not None and row[0] != served[name]}
        if not changed:
            return False
        guards = moderator.guards
        loaded = getattr(guards, "loaded", None)
        if loaded is None:  # an ONNX export serves its own, fixed, policy
            return False
        from guard.check.engine import GuardSet

        artifacts = store.load_artifacts(list(served))
        try:
            fresh = GuardSet(artifacts, loaded)
        except Exception as exc:
            log.error("cannot serve the new versions", extra={"versions": changed, "reason": first_line(exc)})
            return False
        moderator.swap(fresh)
        self.reloads += 1
        log.info("serving new versions", extra={"from": served, "to": changed})
        return True

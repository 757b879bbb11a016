"""kill -9 during compile loses nothing (tests/support/crash.py; scripts/reliability.py runs 50+)."""

from tests.support import crash


def test_kill_9_during_compile_leaves_every_version_whole(tmp_path, llama_dir):
    results = crash.trials(tmp_path, str(llama_dir), count=5, seed=1)
    assert [r["problem"] for r in results] == [""] * 5, results
    assert sum(not r["finished_first"] for r in results) >= 1  # at least one kill landed mid-compile
    assert {r["phase"] for r in results} <= {*crash.PHASES, "finished"}  # where each kill landed

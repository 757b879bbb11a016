"""Whole programs: the CLI and the server as subprocesses, PostgreSQL, crashes, the real model, the docs."""

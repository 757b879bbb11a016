"""`guard serve`: a moderation HTTP service (OpenAI's moderation API and guard's own).

Needs the `serve` extra (`pip install "guard-sav[serve]"`: FastAPI, uvicorn, prometheus-client).
`batcher.MicroBatcher` is plain Python and usable on its own; `app.create_app(Service(...))`
gives the FastAPI app, which `guard serve` runs under uvicorn.
"""

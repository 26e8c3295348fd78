"""AUTOMATIC1111's web API (`/sdapi/v1`) served by Likeness with `--api`: models.py (the bodies),
mapping.py (A1111 body <-> GenerationRequest), jobs.py (the one running job, shared with the UI),
routes.py (the FastAPI routes, mounted by ui/app.py's launch)."""

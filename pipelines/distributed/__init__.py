"""Generation workers on Ray (issue 18): one `PipelineManager` per worker, one scheduler in the UI process.

- `worker.py`: `GenerationWorker`, the Ray actor that owns one manager on one device.
- `pool.py`: `WorkerPool`, whose `generate` has `PipelineManager.generate`'s signature and result, so
  the tabs, the CLI and the APIs can call either; it routes each job, relays events and Stop/Skip,
  retries a job once when its worker dies, and saves the images (once, in the UI process).
- `wire.py`: what crosses the process boundary (PNG bytes, not live objects).
- `front.py`: `DispatchingManager`, what the tabs, the A1111 API, the CLI and experiments hold with
  `--workers ray`: generation, models in memory and caches on the workers, the catalog here.

Nothing here imports Ray at import time of `pipelines`: only `--workers ray` imports this package's
`pool` module, and Ray is an optional extra (requirements-scale.txt).
"""

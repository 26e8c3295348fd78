"""One local Ray cluster for every test in tests/distributed that needs workers.

Starting Ray and two CPU workers (each building a PipelineManager) takes tens of seconds on 2
cores, so the cluster is session-scoped and shared; test files sort so that the ones counting
jobs (test_ray_workers.py) run first.
"""
from __future__ import annotations

import pytest

from tests.distributed import REPO_ROOT


@pytest.fixture(scope="session")
def pool(tmp_path_factory, shared_models_dir, demo_cache_dir):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -r requirements-scale.txt")
    from pipelines.distributed.pool import PoolConfig, WorkerPool
    from pipelines.manager import ManagerConfig

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}})
    config = ManagerConfig(models_dir=shared_models_dir, outputs_dir=tmp_path_factory.mktemp("ray-outputs"),
                           cache_dir=demo_cache_dir, device="cpu", include_hf_cache=False, latent_cache_entries=0)
    workers = WorkerPool(config, PoolConfig(count=2, device="cpu")).start()
    yield workers
    workers.shutdown()
    ray.shutdown()

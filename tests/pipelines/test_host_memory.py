"""CPU denoising reuses freed tensor buffers instead of faulting fresh pages in every step."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# A few "denoising steps" of a small conv stack (8 MiB activations) in a fresh interpreter; prints the
# page faults of the third step (the first steps' come from touching the heap the first time).
STEPS = """
import resource, sys, torch
from pipelines import devices
if sys.argv[1] == "reuse":
    assert devices.reuse_freed_host_memory()
torch.manual_seed(0)
torch.set_num_threads(1)
net = torch.nn.Sequential(*[torch.nn.Conv2d(64, 64, 3, padding=1) for _ in range(4)])
x = torch.randn(2, 64, 128, 128)
with torch.no_grad():
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        net(x)
print(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
"""


def third_step_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, timeout=120, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_step_buffers_are_reused_without_page_faults():
    assert third_step_faults("default") > 2000  # glibc's default: fresh mmaps, 8 MiB faulted in again every step
    assert third_step_faults("reuse") < 200

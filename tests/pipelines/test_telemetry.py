"""Telemetry events: order, stage pairs, steps inside the denoise stage, and honest clocks.

Synchronization is checked by recording, in one log, every `devices.synchronize` call, every clock
read of the telemetry module and every event: a stage end or a step must be preceded by a sync and
then the clock read that timed it. (On the CPU synchronize is a no-op; on a GPU a missing sync would
bill queued kernels to the wrong stage.)
"""
from __future__ import annotations

import time

import pytest

from pipelines import devices, telemetry
from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.telemetry import EventBus, MemorySampled, Notice, PreviewReady, StageEnded, StageStarted, StepDone, format_step
from tests.tiny_models import demo_request

STEPS = 3
BATCHES = 2


class RecordingClock:
    """Stands in for the `time` module inside pipelines.telemetry: every perf_counter read is logged."""

    def __init__(self, log: list):
        self.log = log

    def perf_counter(self) -> float:
        self.log.append("clock")
        return time.perf_counter()

    def __getattr__(self, name):
        return getattr(time, name)


@pytest.fixture
def demo_manager(make_manager):
    manager = make_manager(preview_every=2, latent_cache_entries=0)  # every run really denoises
    manager.load(DEMO_MODEL_NAME)  # no model-load stage in the runs below
    return manager


@pytest.fixture
def recorded(monkeypatch):
    log: list = []
    real_sync = devices.synchronize

    def fake_sync(device):
        log.append("sync")
        real_sync(device)

    monkeypatch.setattr(devices, "synchronize", fake_sync)
    monkeypatch.setattr(telemetry, "time", RecordingClock(log))
    return log


def run(manager, log, **fields):
    fields = {"steps": STEPS, "batch_count": BATCHES, **fields}
    result = manager.generate(demo_request(**fields), listener=log.append)
    return result, [item for item in log if not isinstance(item, str)]


def test_event_order_stage_pairs_and_steps(demo_manager, recorded):
    result, events = run(demo_manager, recorded)
    open_stage = None
    denoise_steps: list[list[int]] = []
    stage_totals: dict[str, float] = {}
    for index, event in enumerate(events):
        if isinstance(event, StageStarted):
            assert open_stage is None, f"{event.stage} started inside {open_stage}"
            open_stage = event.stage
            if event.stage == "denoise":
                denoise_steps.append([])
        elif isinstance(event, StageEnded):
            assert event.stage == open_stage, f"{event.stage} ended but {open_stage} was open"
            assert event.seconds >= 0
            stage_totals[event.stage] = stage_totals.get(event.stage, 0.0) + event.seconds
            next_event = events[index + 1]
            assert isinstance(next_event, MemorySampled) and next_event.stage == event.stage
            assert next_event.reading.process_rss_bytes > 0
            open_stage = None
        elif isinstance(event, StepDone):
            assert open_stage == "denoise", "a step outside the denoise stage"
            denoise_steps[-1].append(event.index)
            assert event.total == STEPS * BATCHES
    assert open_stage is None
    assert denoise_steps == [[1, 2, 3], [4, 5, 6]]
    stages = [e.stage for e in events if isinstance(e, StageStarted)]
    assert stages == ["text encode"] + ["denoise", "VAE decode", "save"] * BATCHES
    assert stage_totals == pytest.approx(result.stage_seconds)
    steps = [e for e in events if isinstance(e, StepDone)]
    assert [e.step_seconds for e in steps] == result.step_seconds
    elapsed = [e.elapsed_seconds for e in steps]
    assert elapsed == sorted(elapsed)
    assert steps[-1].eta_seconds == 0
    assert format_step(steps[0]).startswith(f"step 1/{STEPS * BATCHES} · ")


def test_previews_every_n_steps_inside_denoise(demo_manager, recorded):
    _, events = run(demo_manager, recorded, steps=4)
    previews = [e for e in events if isinstance(e, PreviewReady)]
    # preview_every=2, 4 steps: after step 2 of each batch (never after the last step: the image follows).
    assert [p.index for p in previews] == [2, 6]
    assert all(p.image.size == (8, 8) for p in previews)  # latent resolution of a 64x64 image
    order = [type(e).__name__ for e in events]
    first_preview = order.index("PreviewReady")
    assert order[first_preview - 1] == "StepDone" and events[first_preview - 1].index == 2


def test_a_sync_precedes_every_clock_read_that_ends_a_stage_or_step(demo_manager, recorded):
    demo_manager.generate(demo_request(steps=STEPS, batch_count=BATCHES), listener=recorded.append)
    checked = 0
    for index, item in enumerate(recorded):
        if isinstance(item, (StageEnded, StepDone, StageStarted)):
            assert recorded[index - 1] == "clock", f"{item} was published without a fresh clock read"
            assert recorded[index - 2] == "sync", f"the clock read for {item} was not preceded by a device sync"
            checked += 1
    assert checked == (1 + 3 * BATCHES) * 2 + STEPS * BATCHES


def test_telemetry_off_skips_step_syncs(demo_manager, recorded):
    events: list = []
    result = demo_manager.generate(demo_request(steps=STEPS, batch_count=BATCHES, seed=1), listener=events.append, telemetry=False)
    assert events == []
    assert len(result.images) == BATCHES and len(result.step_seconds) == STEPS * BATCHES
    syncs_off = recorded.count("sync")
    recorded.clear()
    demo_manager.generate(demo_request(steps=STEPS, batch_count=BATCHES, seed=2), listener=events.append)
    syncs_on = recorded.count("sync")
    # Stage timers synchronize either way; only the per-step syncs go when telemetry is off.
    assert syncs_on - syncs_off == STEPS * BATCHES
    assert syncs_off >= 2 * (1 + 3 * BATCHES)  # start and end of every stage


def test_telemetry_off_sends_nothing_on_any_bus(demo_manager):
    """Also the manager's own bus: a generation on a loaded model is no load (no "loaded ... 0.0 s" notice)."""
    events: list = []
    unsubscribe = demo_manager.bus.subscribe(events.append)
    demo_manager.generate(demo_request(), listener=events.append, telemetry=False)
    unsubscribe()
    assert events == []


def test_manager_bus_sees_the_same_events(demo_manager):
    direct: list = []
    via_bus: list = []
    unsubscribe = demo_manager.bus.subscribe(via_bus.append)
    demo_manager.generate(demo_request(), listener=direct.append)
    unsubscribe()
    assert direct
    # Everything the listener got, in the same order; the manager bus may add its own notices.
    generation_events = [e for e in via_bus if e in direct]
    assert generation_events == direct
    assert all(isinstance(e, Notice) for e in via_bus if e not in direct)
    seen = len(via_bus)
    demo_manager.generate(demo_request(seed=2))
    assert len(via_bus) == seen, "unsubscribed listeners get nothing"


def test_warnings_are_published_as_notices(demo_manager):
    events: list = []
    demo_manager.generate(demo_request(prompt="word " * 900), listener=events.append)  # SD 1.5 reads long prompts in chunks; 4,000 characters is the cap
    warnings = [e for e in events if isinstance(e, Notice) and e.level == "warning"]
    assert any("characters" in w.text for w in warnings)


def test_event_bus_order_and_unsubscribe():
    bus = EventBus()
    seen: list = []
    first = bus.subscribe(lambda e: seen.append(("a", e)))
    bus.subscribe(lambda e: seen.append(("b", e)))
    bus.publish(Notice("one"))
    first()
    first()  # twice is harmless
    bus.publish(Notice("two"))
    assert seen == [("a", Notice("one")), ("b", Notice("one")), ("b", Notice("two"))]
    assert bus.has_subscribers


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_previews_for_sdxl_and_packed_flux_latents(make_manager, shared_models_dir, family):
    from tests.tiny_models import tiny_request

    manager = make_manager(shared_models_dir, preview_every=1)
    events: list = []
    result = manager.generate(tiny_request(family, steps=3, save=False), listener=events.append)
    previews = [e for e in events if isinstance(e, PreviewReady)]
    assert [p.index for p in previews] == [1, 2]
    # 256 px / VAE factor 8 = 32x32 latents (FLUX's 2x2-packed sequence is unpacked first).
    assert all(p.image.size == (32, 32) and p.image.mode == "RGB" for p in previews)
    assert result.images[0].image.size == (256, 256)


def test_the_first_step_is_not_charged_with_the_prompt_encode(shared_manager, monkeypatch):
    """The text encode is its own stage: a slow encode must not show up as a slow first step."""
    import time as time_module

    from pipelines.stages import prepare
    from tests.tiny_models import tiny_request

    real, slow_seconds = prepare.encode_prompts, 0.5

    def slow_encode(*args, **kwargs):
        time_module.sleep(slow_seconds)
        return real(*args, **kwargs)

    monkeypatch.setattr(prepare, "encode_prompts", slow_encode)
    shared_manager.prompt_memo.clear()
    result = shared_manager.generate(tiny_request("sd15", seed=3, steps=2, prompt="a slow prompt to encode"))
    assert result.stage_seconds["text encode"] >= slow_seconds
    assert result.step_seconds[0] < slow_seconds

"""ui/session.py without a browser: what the live preview sends, and the readout of a job waiting in the queue."""
from __future__ import annotations

import gradio as gr

from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.request import GenerationRequest
from ui.session import CancelRegistry, queue_markdown, queue_tick, stream_generation


def test_gradio_rewrites_a_resent_picture_in_place_so_a_reader_can_get_less_than_promised(tmp_path):
    """The cause of the console's h11 "Too little data for declared Content-Length": Gradio saves every picture a
    handler yields under a name made from its content, with `write_bytes` (truncate, then write). Yield the same
    preview again and the file is truncated and rewritten while the browser may be fetching it; the file route
    promised the size it read first (Content-Length) and sends what is left. Here a reader does what the route
    does (size, then read) while the same picture is saved again and again, until a read comes up short."""
    import os
    import threading
    import time

    import numpy as np
    from gradio.processing_utils import save_pil_to_cache
    from PIL import Image

    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    path = save_pil_to_cache(picture, str(tmp_path), format="png")
    done, short = threading.Event(), []

    def resend():
        while not done.is_set():
            assert save_pil_to_cache(picture, str(tmp_path), format="png") == path  # same content, same file
    writer = threading.Thread(target=resend, daemon=True)
    writer.start()
    deadline = time.time() + 60
    try:
        while not short and time.time() < deadline:
            promised = os.path.getsize(path)
            with open(path, "rb") as file:
                sent = len(file.read())
            if sent < promised:
                short.append((promised, sent))
    finally:
        done.set()
        writer.join()
    assert short, "no short read in 60 s (the race is timing-dependent; Gradio may have stopped rewriting in place)"


def test_the_same_preview_is_never_sent_twice(make_manager):
    """The stream sends an update every 0.25 s; re-sending an unchanged preview made Gradio rewrite its cached PNG in place
    while the browser was still reading it (h11: "Too little data for declared Content-Length")."""
    manager = make_manager(preview_every=1)
    request = GenerationRequest(DEMO_MODEL_NAME, "a red circle", steps=4, width=64, height=64, seed=3, save=False)
    updates = list(stream_generation(manager, request, CancelRegistry(), "session-a"))
    sent = [update.preview_output() for update in updates]
    pictures = [item for item in sent if not isinstance(item, dict)]
    assert updates[-1].result is not None
    assert 1 <= len(pictures) <= 4, f"one picture per new preview (preview every step of 4): {len(pictures)}"
    assert len({id(picture) for picture in pictures}) == len(pictures), "a picture was sent twice"
    assert len(updates) > len(pictures), "updates without a new preview exist (the readout ticks) and send none"
    assert all(item == {"__type__": "update"} for item in sent if isinstance(item, dict)), "no update keeps the shown picture"


def test_the_stream_paces_its_updates_and_loses_no_event():
    """Events come as fast as the engine makes them (a tiny model's steps take milliseconds); the stream hands
    them on in order, at most one batch per `every` seconds, and the rest at once when the run ends."""
    import threading
    import time

    from ui.session import _DONE, GenerationSession

    session = GenerationSession(manager=None, request=None, cancel=None)  # not started: its queue is fed by hand

    def engine():
        for number in range(300):
            session.events.put(number)
            time.sleep(0.002)
        session.events.put(_DONE)
    threading.Thread(target=engine, daemon=True).start()
    received, arrivals = [], []
    for batch in session.stream(every=0.2):
        arrivals.append(time.monotonic())
        received.extend(batch)
    assert received == list(range(300))
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:-1])]  # the last one comes at the end, early
    assert gaps and min(gaps) >= 0.19, f"batches closer than 0.2 s apart: {gaps}"
    assert len(arrivals) < 300 / 5, "the stream did not gather events into batches"


def test_queue_positions_follow_the_order_of_the_clicks():
    cancels = CancelRegistry()
    for session in ("first", "second", "third"):
        cancels.arm(session)
    assert [cancels.queue_position(s) for s in ("first", "second", "third")] == [1, 2, 3]
    cancels.claim("first")  # the first job starts: the others move up
    assert cancels.queue_position("first") is None
    assert [cancels.queue_position(s) for s in ("second", "third")] == [1, 2]
    cancels.signal("second")  # Stop while queued: no longer waiting, nobody waits behind it
    assert cancels.queue_position("second") is None and cancels.queue_position("third") == 1
    cancels.forget_armed("third")
    assert cancels.queue_position("third") is None


def test_queue_readout_names_the_place_and_the_job_ahead():
    progress = {"eta_relative": 42.4, "textinfo": "denoise: step 12/40"}
    text = queue_markdown(1, "a job from a browser tab", progress)
    assert "yours is next" in text and "a job from a browser tab · denoise: step 12/40, about 42 s left" in text
    assert "2 jobs ahead of yours" in queue_markdown(3, "an API txt2img job", progress)
    assert queue_markdown(1, None, None) == "**starting…**"
    assert "waiting for the job ahead to start" in queue_markdown(2, None, None)


def test_a_queue_tick_sends_only_a_change_and_stops_once_the_job_started():
    """The timer's answer can reach the page after the run's own last readout (a run refused at once, on a loaded
    machine: seen in a browser test): the same "starting…" again is no update, so it cannot hide the run's message."""
    cancels = CancelRegistry()
    cancels.arm("waiting")
    readout, timer = queue_tick(cancels, None, "waiting", None)
    assert readout == "**starting…**"
    readout, timer = queue_tick(cancels, None, "waiting", "**starting…**")
    assert readout == gr.update() and timer == gr.update()
    cancels.arm("behind")
    assert "yours is next" not in queue_tick(cancels, None, "behind", "**starting…**")[0]  # a change is sent
    cancels.claim("waiting")
    readout, timer = queue_tick(cancels, None, "waiting", "**starting…**")
    assert readout == gr.update() and timer.active is False

"""The app's own CSS, in one place (Gradio 6 takes it in `launch(css=...)`).

Each rule says which tab or issue it serves; selectors use our `elem_id`s and `elem_classes`, and
Gradio's own class names only where there is no other hook (the Dataframe's header cells and
scroll viewport), so a Gradio upgrade that renames them loses the polish, not the function.
"""
from __future__ import annotations

TABLES = """
/* Tables: a header breaks between words, never inside one ("forma/t", "St/ep/s"): its column is at
   least as wide as its longest word; a table wider than the page scrolls, with a scrollbar one can see. */
.table-wrap th.header-cell .header-content > span {
  word-break: keep-all !important;
  overflow-wrap: normal !important;
  hyphens: none;
  min-width: min-content !important;
}
.table-wrap .virtual-table-viewport { scrollbar-width: auto !important; scrollbar-color: #8a8a8a #e5e5e5 !important; }
.table-wrap .virtual-table-viewport::-webkit-scrollbar { height: 10px !important; width: 10px !important; }
.table-wrap .virtual-table-viewport::-webkit-scrollbar-thumb { background-color: #8a8a8a !important; border-radius: 5px; }
.table-wrap .virtual-table-viewport::-webkit-scrollbar-track { background-color: #e5e5e5; }
"""

EXPERIMENTS = """
/* Experiments: the empty state, and room between the axis columns and option rows. */
#exp_empty { border: 1px dashed var(--border-color-primary); border-radius: var(--radius-lg); padding: var(--size-4) var(--size-6);
             color: var(--body-text-color); background: var(--background-fill-secondary); }
#exp_axes, #exp_options { gap: var(--size-4) !important; }
#exp_buttons { align-items: center; }
"""

SETTINGS = """
/* Settings: Save stays in view while the form scrolls; help text readable; a refused field marked.
   Gradio's container is overflow: hidden, which makes it the scroll box a sticky element sticks in (and it
   never scrolls); clip cuts overflow the same way without being a scroll box. */
.gradio-container { overflow: clip !important; }
#settings_bar { position: sticky; top: 0; z-index: 20; background: var(--background-fill-primary);
                padding: var(--size-2) 0; border-bottom: 1px solid var(--border-color-primary); align-items: center; }
#settings_form .info-text { color: var(--body-text-color) !important; opacity: 0.85; }
#settings_form [data-testid=block-info], #settings_form .label-text { color: var(--body-text-color) !important; }
#settings_form .setting-error { border: 2px solid #d92d20 !important; border-radius: var(--radius-md); }
#settings_form .setting-error .info-text { color: #b42318 !important; opacity: 1; font-weight: 600; }
"""

GENERATE = """
/* Live preview (Generate, img2img): the preview is a few dozen pixels (the latent's size); fill the box and show
   its pixels as blocks, not a blur, the way a preview of a picture still being made should look. */
.live-preview img { width: 100% !important; height: 100% !important; object-fit: contain; image-rendering: pixelated; }
/* While a run waits or works, Gradio's tracker on the preview and the images keeps its spinner but not its text
   ("queue: 1/1 | 3.4/39.7s", an ETA guessed from past runs, for a 260 s wait): the readout says where the run
   stands in the queue, which job runs ahead and how long it has left. */
:is(#preview, #gallery, #i2i_preview, #i2i_gallery) [data-testid=status-tracker] :is(.eta-bar, .progress-text) {
  display: none !important;
}
/* Every tab: a running output keeps Gradio's orange frame but not its pulse. The pulse redraws the frame 60 times a
   second, and a browser without GPU compositing (a VM, a remote desktop, a headless test) spends a quarter of a
   core on it, taken from the denoiser on a small CPU machine (measured on 2 cores, with the readout's pace in
   ui/session.py: the demo's steps 0.15 s with the pulse, 0.11 s without; 0.08 s with no browser). */
[data-testid=status-tracker].generating { animation: none !important; }
/* A1111's token counter (Generate, img2img): in the prompt box's bottom-right corner, as A1111 has it in a corner of
   the box. The counter's block takes no room (no height, its gap taken back), so the page lays out as without it;
   the text is drawn up into the box. Red when FLUX.1's T5 cuts the prompt. */
.token-counter { margin-top: calc(-1 * var(--layout-gap)) !important; height: 0 !important; min-height: 0 !important;
                 padding: 0 !important; overflow: visible !important; border: none !important; z-index: 5; }
.token-counter .token-count { position: relative; top: -2.1em; float: right; margin-right: 0.9em; font-size: var(--text-sm);
                              color: var(--body-text-color); opacity: 0.7; font-variant-numeric: tabular-nums; pointer-events: none; }
.token-counter .token-over { color: #b42318; opacity: 1; font-weight: 600; }
/* The status bar takes the header row's width beside the short title, so it stays on one line at 1400 px. */
#status { flex: 5 1 0 !important; text-align: right; }
"""

FACE = """
/* The face files' status: a word in a coloured mark, readable without an emoji font. */
.file-mark { display: inline-block; padding: 0 0.45em; border-radius: 4px; font-weight: 600; font-size: 0.9em; }
.file-found { background: #dcfce7; color: #14532d; }
.file-missing { background: #fee2e2; color: #7f1d1d; }
/* Reference photo thumbnails: always a quarter of the row each (Gradio stretches fewer photos than columns to the full width). */
#face_thumbnails .grid-container { grid-template-columns: repeat(4, minmax(0, 1fr)) !important; }
"""

CSS = TABLES + EXPERIMENTS + SETTINGS + GENERATE + FACE

"""The page's keyboard shortcuts, as A1111 users have them in their fingers (Gradio 6: `launch(js=...)`).

- Ctrl+Enter (Cmd+Enter): generate, in whichever generating tab is on screen.
- Esc: stop that tab's run (running or still queued); Esc does nothing while nothing runs there, so it still
  closes menus and the full-size image view as usual.
- Ctrl+Up / Ctrl+Down in a prompt box: the weight of the selected text up or down by WEIGHT_STEP, written
  A1111's way, `(text:1.1)`. With nothing selected, the weighted group around the cursor, else the word
  under it; an existing `(text:1.2)` is edited in place, and at weight 1.0 the parentheses go.

Each generating tab is one row of TABS: its Generate button, its Stop button, and the output whose
Gradio status tracker shows that its run is queued or running. Generate and img2img draw that tracker on
their gallery only (generation_form.progress_shown_on): the readout is ours, and the timer that writes the
queue place into it would hide a tracker there while the run still waits. Prompt boxes are the textareas inside
an element whose id ends in "prompt" (prompt, negative_prompt, i2i_prompt, face_detail_prompt).
"""
from __future__ import annotations

import json

# (generate button, stop button, an output of the run) per generating tab, by elem_id.
TABS = (("generate", "stop", "gallery"), ("i2i_generate", "i2i_stop", "i2i_gallery"),
        ("face_generate", "face_stop", "face_readout"), ("exp_run", "exp_cancel", "exp_progress"))
WEIGHT_STEP = 0.1
# Characters that end a word when the cursor picks the word to weight (A1111's default delimiters, and space).
WORD_DELIMITERS = ".,\\/!?%^*;:{}=`~()[]<>|\"' \t\n"

SHORTCUTS_JS = """
() => {
  const TABS = %(tabs)s, STEP = %(step)s, DELIMITERS = %(delimiters)s;
  const visible = (id) => { const el = document.getElementById(id); return el && el.offsetParent !== null ? el : null; };
  // A run is queued or running while Gradio's status tracker of one of its outputs is shown.
  const busy = (outputId) => {
    const tracker = document.getElementById(outputId)?.querySelector('[data-testid=status-tracker]');
    return !!tracker && !tracker.classList.contains('hide');
  };
  const onScreen = () => TABS.find(([generate]) => visible(generate));

  // The weighted group `(inner:w)` around `at`, as [start, end) of `inner`; null when the cursor is in none.
  const groupAround = (text, at) => {
    const open = text.lastIndexOf('(', at - 1), close = text.indexOf(')', at);
    if (open < 0 || close < 0 || text.slice(open + 1, at).includes(')') || text.slice(at, close).includes('(')) return null;
    const match = text.slice(open + 1, close).match(/^([\\s\\S]*):\\s*-?\\d*\\.?\\d+\\s*$/);
    return match && match[1].trim() ? [open + 1, open + 1 + match[1].length] : null;
  };
  const wordAround = (text, at) => {
    let start = at, end = at;
    while (start > 0 && !DELIMITERS.includes(text[start - 1])) start--;
    while (end < text.length && !DELIMITERS.includes(text[end])) end++;
    return [start, end];
  };
  const editWeight = (area, up) => {
    const text = area.value;
    let [start, end] = [area.selectionStart, area.selectionEnd];
    if (start === end) [start, end] = groupAround(text, start) || wordAround(text, start);
    while (start < end && /\\s/.test(text[start])) start++;
    while (end > start && /\\s/.test(text[end - 1])) end--;
    if (start === end) return false;
    const weightAfter = text.slice(end).match(/^:\\s*(-?\\d*\\.?\\d+)\\s*\\)/);
    const weighted = text[start - 1] === '(' && weightAfter;
    const old = weighted ? parseFloat(weightAfter[1]) : 1.0;
    const weight = Math.round((old + (up ? STEP : -STEP)) / STEP) * STEP;
    const inner = text.slice(start, end);
    const from = weighted ? start - 1 : start, to = weighted ? end + weightAfter[0].length : end;
    const digits = Math.max(1, (String(STEP).split('.')[1] || '').length);
    const atOne = Math.abs(weight - 1) < STEP / 2;
    area.value = text.slice(0, from) + (atOne ? inner : '(' + inner + ':' + weight.toFixed(digits) + ')') + text.slice(to);
    const innerStart = atOne ? from : from + 1;
    area.setSelectionRange(innerStart, innerStart + inner.length);
    area.dispatchEvent(new Event('input', { bubbles: true }));  // Gradio reads the box's value from this event
    return true;
  };

  window.likenessShortcuts = true;  // for tests: the listener is in place
  document.addEventListener('keydown', (event) => {
    const ctrl = event.ctrlKey || event.metaKey;
    if (ctrl && event.key === 'Enter') {
      const tab = onScreen();
      if (tab) { event.preventDefault(); visible(tab[0]).click(); }
    } else if (event.key === 'Escape' && !event.defaultPrevented) {
      const tab = onScreen();
      if (tab && busy(tab[2]) && visible(tab[1])) { event.preventDefault(); visible(tab[1]).click(); }
    } else if (ctrl && (event.key === 'ArrowUp' || event.key === 'ArrowDown')) {
      const area = event.target;
      if (area.tagName === 'TEXTAREA' && area.closest('[id$="prompt"]') && editWeight(area, event.key === 'ArrowUp')) event.preventDefault();
    }
  });
}
""" % {"tabs": json.dumps(TABS), "step": json.dumps(WEIGHT_STEP), "delimiters": json.dumps(WORD_DELIMITERS)}

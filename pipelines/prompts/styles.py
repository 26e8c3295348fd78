"""Prompt styles as A1111 keeps them: `styles.csv` (name, prompt, negative_prompt), applied by name.

A style's prompt with `{prompt}` in it wraps the user's prompt there; without it, it is appended after a comma
(A1111's `merge_prompts`); the negative prompt the same way. An A1111 `styles.csv` copied into the models folder
works as it is. The file is read again when it changes, so a style saved from another page (or edited by hand)
shows at the next use.
"""
from __future__ import annotations

import csv
import io
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from pipelines.atomic import write_text_atomically
from pipelines.errors import InvalidRequest
from pipelines.request import is_name_list

STYLES_FILE = "styles.csv"
COLUMNS = ("name", "prompt", "negative_prompt")
MAX_STYLES_BYTES = 4 * 2**20  # far beyond any hand-kept list; a stray huge file is refused, not read into every request
MAX_NAME_CHARS = 200


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def merge_prompts(style_prompt: str, prompt: str) -> str:
    """A1111's rule: `{prompt}` in the style marks where the prompt goes; otherwise the style follows it."""
    if "{prompt}" in style_prompt:
        return style_prompt.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_prompt.strip()) if part)


def apply_styles(styles: list[Style], prompt: str, negative: str) -> tuple[str, str]:
    for style in styles:
        prompt, negative = merge_prompts(style.prompt, prompt), merge_prompts(style.negative_prompt, negative)
    return prompt, negative


def strip_style(style_text: str, prompt: str) -> str | None:
    """`prompt` without what `merge_prompts` added for `style_text`, or None when it was not merged in."""
    prompt, style_text = prompt.strip(), style_text.strip()
    if "{prompt}" in style_text:
        left, _, right = style_text.partition("{prompt}")
        if prompt.startswith(left) and prompt.endswith(right) and len(prompt) >= len(left) + len(right):
            return prompt[len(left):len(prompt) - len(right)]
        return None
    if not style_text:
        return prompt
    if prompt == style_text:
        return ""
    return prompt[:-len(style_text) - 2] if prompt.endswith(", " + style_text) else None


def extract_styles(styles: list[Style], prompt: str, negative: str) -> tuple[list[str], str, str]:
    """The styles whose words end (or wrap) both prompts, outermost first, and the prompts without them: A1111's paste
    ("Apply if any"), so an image made with styles comes back as the user's own words plus the styles chosen."""
    found: list[str] = []
    candidates = [style for style in styles if style.prompt.strip() or style.negative_prompt.strip()]
    while True:
        for style in candidates:
            bare, bare_negative = strip_style(style.prompt, prompt), strip_style(style.negative_prompt, negative)
            if bare is not None and bare_negative is not None:
                found.append(style.name)
                candidates.remove(style)
                prompt, negative = bare, bare_negative
                break
        else:
            return list(reversed(found)), prompt, negative


class StyleLibrary:
    """The styles in one `styles.csv`; a missing file is an empty library, a damaged one a message on use."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._styles: dict[str, Style] = {}
        self._problem: str | None = None

    def styles(self) -> list[Style]:
        """Every style, in the file's order; raises InvalidRequest (naming the file) when it cannot be read."""
        with self._lock:
            self._reload()
            if self._problem:
                raise InvalidRequest(self._problem)
            return list(self._styles.values())

    def names(self) -> list[str]:
        """The style names, or none when the file cannot be read (the page still builds; a run says why)."""
        try:
            return [style.name for style in self.styles()]
        except InvalidRequest:
            return []

    def expand(self, request):
        """`request` with its styles applied to the prompt and negative prompt, and no styles left to apply again
        (a Ray worker or a second pass gets the finished prompt)."""
        names = request.styles
        if not names:
            return request
        if not is_name_list(names):  # checked here too: this runs before validate_request, and a string would iterate
            raise InvalidRequest(f"Styles must be a list of style names, got {names!r:.80}.")
        if not isinstance(request.prompt, str) or not isinstance(request.negative_prompt, str):
            return request  # validate_request names the wrong type
        prompt, negative = self.apply(names, request.prompt, request.negative_prompt)
        changes = {"prompt": prompt, "negative_prompt": negative}
        hires = (request.hires_prompt, request.hires_negative_prompt)
        if all(isinstance(text, str) for text in hires) and any(hires):  # A1111 styles its hires prompts too ("" = the main ones)
            hires_prompt, hires_negative = self.apply(names, request.hires_prompt or request.prompt,
                                                      request.hires_negative_prompt or request.negative_prompt)
            changes |= {"hires_prompt": hires_prompt if request.hires_prompt else "",
                        "hires_negative_prompt": hires_negative if request.hires_negative_prompt else ""}
        return replace(request, styles=(), **changes)

    def apply(self, names, prompt: str, negative: str) -> tuple[str, str]:
        """The two prompts with the styles `names` applied, in order; InvalidRequest naming any unknown one."""
        known = {style.name: style for style in self.styles()}
        missing = [name for name in names if name not in known]
        if missing:
            have = ", ".join(known) or f"none yet (save one from the Generate tab, or put A1111's {STYLES_FILE} in {self.path.parent})"
            raise InvalidRequest(f"No style named {', '.join(repr(n) for n in missing)} in {self.path}; styles here: {have}.")
        return apply_styles([known[name] for name in names], prompt, negative)

    def extract(self, prompt: str, negative: str) -> tuple[list[str], str, str]:
        """`extract_styles` with this file's styles (none when it cannot be read)."""
        try:
            return extract_styles(self.styles(), prompt, negative)
        except InvalidRequest:
            return [], prompt, negative

    def save(self, name: str, prompt: str, negative: str) -> str:
        """Add or replace the style `name` (atomically: a crash leaves the old file); returns what was done."""
        name = (name or "").strip()
        if not name:
            raise InvalidRequest("Give the style a name.")
        if len(name) > MAX_NAME_CHARS or any(ch in name for ch in "\r\n"):
            raise InvalidRequest(f"A style name is one line of at most {MAX_NAME_CHARS} characters.")
        with self._lock:
            self._reload()
            if self._problem:
                raise InvalidRequest(self._problem + " Fix or move it before saving a style.")
            replaced = name in self._styles
            styles = dict(self._styles)
            styles[name] = Style(name, prompt or "", negative or "")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomically(self.path, _to_csv(styles.values()))
            self._stamp = None  # read back at the next use
        return f"Style {name!r} {'replaced' if replaced else 'saved'} in {self.path}."

    def _reload(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._styles, self._problem = None, {}, None
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self._styles, self._problem = _read(self.path, stat.st_size), None
        except (OSError, UnicodeDecodeError, csv.Error, ValueError) as error:
            self._styles, self._problem = {}, f"The styles file {self.path} cannot be read ({error})."


def _read(path: Path, size: int) -> dict[str, Style]:
    if size > MAX_STYLES_BYTES:
        raise ValueError(f"{size:,} bytes, more than the {MAX_STYLES_BYTES // 2**20} MiB a styles file may have")
    rows = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"), newline=""))
    if rows.fieldnames is None or "name" not in rows.fieldnames:
        raise ValueError("its first line must name the columns: name,prompt,negative_prompt")
    styles = {}
    for row in rows:
        name = (row.get("name") or "").strip()
        if name:  # A1111 skips unnamed rows too
            styles[name] = Style(name, row.get("prompt") or "", row.get("negative_prompt") or "")
    return styles


def _to_csv(styles) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for style in styles:
        writer.writerow((style.name, style.prompt, style.negative_prompt))
    return out.getvalue()

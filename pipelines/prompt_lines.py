"""A1111's "Prompts from file or textbox" script: one generation per line of a list, each line a prompt or A1111's
`--tag value` options (`--prompt "a cat" --steps 30 --seed 5`), over the form's settings.

The lines are read (and every one checked) before anything runs, so a typo on line 40 costs nothing: the message names
the line. A1111's own script falls back to the whole line as a prompt when a line does not parse; Likeness refuses it
instead, since that prompt ("--stpes 30 a cat") is never what was meant.

Seeds as A1111's: "Iterate seed every line" adds batch size x batch count to the seed after each line, "Use same random
seed for all lines" draws one seed for them all (both draw it once when the seed is -1). A line's prompt goes at the
start (A1111 1.10's default) or the end of the form's prompt, joined by a space; an empty form prompt is the line's."""
from __future__ import annotations

import random
import shlex
from dataclasses import dataclass, replace

from pipelines.errors import InvalidRequest, LikenessError
from pipelines.request import MAX_SEED, GenerationRequest, validate_request

POSITIONS = ("start", "end")  # where a line's prompt goes in the form's prompt (A1111 1.10's "Insert prompts at the")
MAX_LINES = 1000
MAX_FILE_BYTES = 1_000_000  # a prompt list, not a book: read no further, whatever the file's size


def read_prompt_file(path, what: str = "The list") -> str:
    """A prompt list file's text (UTF-8; a BOM from Notepad dropped), never more than MAX_FILE_BYTES read; InvalidRequest
    starting with `what` when it cannot be read, is too long or is not UTF-8."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise InvalidRequest(f"{what} cannot be read: {error.strerror or error}.") from None
    if len(data) > MAX_FILE_BYTES:
        raise InvalidRequest(f"{what} is over {MAX_FILE_BYTES // 1000:,} kB; split it (at most {MAX_LINES:,} lines run at once).")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InvalidRequest(f"{what} is not UTF-8 text (byte {error.start} cannot be read); save it as UTF-8.") from None


def _text(value: str) -> str:
    return value


def _whole(value: str) -> int:
    return int(value)


def _number(value: str) -> float:
    return float(value)


def _flag(value: str) -> bool:
    return value == "true"  # A1111's: anything else is false


def _styles(value: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in value.split(",") if name.strip())


# A1111's tags (scripts/prompts_from_file.py) -> (GenerationRequest field, how the value is read); None: accepted,
# not used here (said in the notes).
TAGS = {
    "sd_model": ("model", _text), "prompt": ("prompt", _text), "negative_prompt": ("negative_prompt", _text), "styles": ("styles", _styles),
    "seed": ("seed", _whole), "subseed": ("subseed", _whole), "subseed_strength": ("subseed_strength", _number),
    "seed_resize_from_h": ("seed_resize_from_h", _whole), "seed_resize_from_w": ("seed_resize_from_w", _whole),
    "sampler_name": ("sampler", _text), "batch_size": ("batch_size", _whole), "n_iter": ("batch_count", _whole),
    "steps": ("steps", _whole), "cfg_scale": ("cfg_scale", _number), "width": ("width", _whole), "height": ("height", _whole),
    "tiling": ("tiling", _flag), "do_not_save_samples": ("save", lambda value: not _flag(value)),
    "outpath_samples": None, "outpath_grids": None, "prompt_for_display": None, "do_not_save_grid": None, "restore_faces": None,
    "sampler_index": None,
}
WORDS = ("prompt", "negative_prompt")  # A1111 takes every word up to the next --tag for these


@dataclass(frozen=True)
class PromptLine:
    number: int  # in the text, from 1 (blank lines counted), for messages
    fields: dict  # GenerationRequest fields the line sets
    notes: tuple[str, ...] = ()


def parse_line(line: str, number: int) -> PromptLine:
    """One line: a prompt, or A1111's `--tag value` options; InvalidRequest naming the line and the problem."""
    if "--" not in line:
        return PromptLine(number, {"prompt": line})
    try:
        words = shlex.split(line)
    except ValueError as error:  # an unclosed quote
        raise InvalidRequest(f"Line {number}: {error} in {line!r}.") from None
    fields, notes, position = {}, [], 0
    while position < len(words):
        word = words[position]
        if not word.startswith("--"):
            raise InvalidRequest(f"Line {number}: {word!r} should be a --tag (A1111's: --prompt \"...\" --steps 30); got {line!r}.")
        tag = word[2:]
        if tag not in TAGS:
            raise InvalidRequest(f"Line {number}: unknown option --{tag}; A1111's are: {', '.join('--' + t for t in TAGS)}.")
        if position + 1 >= len(words):
            raise InvalidRequest(f"Line {number}: --{tag} needs a value.")
        end = position + 2
        if tag in WORDS:
            while end < len(words) and not words[end].startswith("--"):
                end += 1
        value = " ".join(words[position + 1:end])
        position = end
        if TAGS[tag] is None:
            notes.append(f"line {number}: --{tag} is not used here")
            continue
        field, read = TAGS[tag]
        try:
            fields[field] = read(value)
        except ValueError:
            raise InvalidRequest(f"Line {number}: --{tag} must be a number, got {value!r}.") from None
    return PromptLine(number, fields, tuple(notes))


def parse_lines(text) -> list[PromptLine]:
    """Every non-blank line, checked; InvalidRequest for the first bad one, or when there is none."""
    if not isinstance(text, str):
        raise InvalidRequest(f"The list of prompt inputs must be text, got {type(text).__name__}.")
    lines = [parse_line(line.strip(), number) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise InvalidRequest("The list of prompt inputs is empty: write one prompt (or --prompt \"...\" --steps N ...) per line.")
    if len(lines) > MAX_LINES:
        raise InvalidRequest(f"The list has {len(lines)} lines; at most {MAX_LINES} run at once.")
    return lines


def joined(line_text: str, form_text: str, position: str) -> str:
    if not line_text or not form_text:
        return line_text or form_text
    return f"{line_text} {form_text}" if position == "start" else f"{form_text} {line_text}"


def line_requests(base: GenerationRequest, lines: list[PromptLine], iterate_seed: bool = False, same_seed: bool = False,
                  position: str = "start", rng: random.Random | None = None) -> list[GenerationRequest]:
    """The request of each line: the form's, with the line's fields, its prompts placed by `position`, and the seeds."""
    if position not in POSITIONS:
        raise InvalidRequest(f"Prompt position must be one of {', '.join(POSITIONS)}, got {position!r}.")
    seed = base.seed
    if (iterate_seed or same_seed) and seed == -1:
        seed = (rng or random.SystemRandom()).randrange(MAX_SEED)
    requests = []
    for line in lines:
        fields = dict(line.fields)
        for name in WORDS:
            if name in fields:
                fields[name] = joined(fields[name], getattr(base, name), position)
        requests.append(replace(base, **({"seed": seed} | fields)))
        if iterate_seed and isinstance(base.batch_size, int) and isinstance(base.batch_count, int):
            seed += base.batch_size * base.batch_count  # the form's batch, as A1111 counts
    return requests


def check_requests(lines: list[PromptLine], requests: list[GenerationRequest], family_of) -> None:
    """Each line's request as the engine will check it (`family_of(model name)`: its model's family), before the first
    runs; InvalidRequest naming the line."""
    for line, one in zip(lines, requests):
        try:
            validate_request(one, family_of(one.model))
        except LikenessError as error:
            raise InvalidRequest(f"Line {line.number}: {error}") from None

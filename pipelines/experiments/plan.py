"""An experiment definition, and the plan of cells it becomes once every value has been checked.

The definition is what the user wrote (starting settings, up to three axes as text, options); it
round-trips through JSON so an exported experiment can be run again. `build_plan` checks all of it
against the installed models and the request limits BEFORE anything runs, and names the axis and
the value in any message. Every cell uses the same seed; a random starting seed (-1) is drawn once.
"""
from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from pipelines.choices import HIRES_SAME_SAMPLER
from pipelines.errors import InvalidRequest, LikenessError
from pipelines.experiments.axes import NO_STYLE, Setting, find_setting, parse_values
from pipelines.face.options import ID_WEIGHTS, FaceOptions
from pipelines.images import open_input_image
from pipelines.lora.tags import MAX_WEIGHT as MAX_LORA_WEIGHT
from pipelines.lora.tags import extract_lora_tags, reweight_lora_tags
from pipelines.request import IMAGE_FIELDS, GenerationRequest, hires_on, random_seed, refiner_name, validate_request
from pipelines.samplers import AUTOMATIC, find_sampler, find_schedule_type, has_sampler

AXIS_NAMES = ("X", "Y", "Z")
MAX_REPEATS = 20
FORMAT_VERSION = 1
REQUEST_FIELDS = {f.name for f in fields(GenerationRequest)}
FACE_FIELDS = {f.name for f in fields(FaceOptions)}
MAX_PULID_WEIGHT = 5.0  # SDXL's id_scale range; FLUX.1 uses 0-3


@dataclass
class AxisSpec:
    setting: str  # a key of axes.SETTINGS, e.g. "steps"
    values: str  # as typed, e.g. "10-30 (+10)"


@dataclass
class Experiment:
    """What the user asked for; `to_dict`/`from_dict` are the experiment file format."""

    base: dict  # GenerationRequest fields; missing ones take the model family's defaults
    axes: list[AxisSpec] = field(default_factory=list)  # X, Y, Z in that order
    baseline: int = 0  # the cell (grid order, X fastest) fidelity is measured against
    warmup: bool = True  # one untimed generation per model before its measured cells
    repeats: int = 1  # measured runs per cell; the table shows medians
    face: dict | None = None  # FaceOptions fields (photos as file paths) when PuLID is on

    def to_dict(self) -> dict:
        return {
            "likeness_experiment": FORMAT_VERSION,
            "base": dict(self.base),
            "axes": [{"setting": a.setting, "values": a.values} for a in self.axes],
            "baseline": self.baseline,
            "warmup": self.warmup,
            "repeats": self.repeats,
            "face": dict(self.face) if self.face else None,
        }

    @classmethod
    def from_dict(cls, data) -> "Experiment":
        """Read an experiment file's object; InvalidRequest says which entry is wrong."""
        if not isinstance(data, dict):
            raise InvalidRequest("An experiment file holds one JSON object with 'base' and 'axes'.")
        unknown = set(data) - {"likeness_experiment", "base", "axes", "baseline", "warmup", "repeats", "face"}
        if unknown:
            raise InvalidRequest(f"Unknown experiment entries: {', '.join(sorted(unknown))}.")
        base = data.get("base", {})
        if not isinstance(base, dict):
            raise InvalidRequest("The experiment's 'base' must be an object of generation settings.")
        axes = data.get("axes", [])
        if not isinstance(axes, list) or not all(isinstance(a, dict) and "setting" in a and "values" in a for a in axes):
            raise InvalidRequest("The experiment's 'axes' must be a list of {\"setting\": ..., \"values\": ...} objects.")
        face = data.get("face")
        if face is not None and not isinstance(face, dict):
            raise InvalidRequest("The experiment's 'face' must be an object (photos, id_weight, start_step...) or null.")
        return cls(
            base=base,
            axes=[AxisSpec(str(a["setting"]), _values_text(a["values"])) for a in axes],
            baseline=_whole(data.get("baseline", 0), "baseline"),
            warmup=bool(data.get("warmup", True)),
            repeats=_whole(data.get("repeats", 1), "repeats"),
            face=face,
        )


def read_experiment(path: Path) -> Experiment:
    """An experiment file (JSON, e.g. exported by the Experiments tab); InvalidRequest names what is wrong.
    Needs no model and imports nothing heavy, so the CLI refuses a bad file before anything loads."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise InvalidRequest(f"Cannot read the experiment file {path}: {error.strerror or error}.") from None
    except ValueError as error:
        raise InvalidRequest(f"The experiment file {path} is not valid JSON: {error}.") from None
    return Experiment.from_dict(data)


def _values_text(values) -> str:
    """Files may hold a JSON list instead of the typed text: [10, 20] reads as "10, 20"."""
    if isinstance(values, list):
        return ", ".join(f'"{v}"' if isinstance(v, str) and "," in v else str(v) for v in values)
    return str(values)


def _whole(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise InvalidRequest(f"The experiment's {name!r} must be a whole number, got {value!r}.")
    return int(value)


@dataclass(frozen=True)
class Axis:
    name: str  # X, Y or Z
    setting: Setting
    values: tuple

    def labels(self) -> list[str]:
        return [self.setting.describe(v) for v in self.values]


@dataclass(frozen=True)
class Cell:
    index: int  # position in grid order (X fastest, then Y, then Z)
    coords: tuple[int, int, int]  # value index on X, Y, Z (0 where the axis is absent)
    request: GenerationRequest
    face: FaceOptions | None
    label: str  # "Steps: 10, CFG scale: 7"
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    experiment: Experiment
    axes: tuple[Axis, ...]
    cells: tuple[Cell, ...]  # grid order
    run_order: tuple[int, ...]  # cell indices, grouped so each model loads once
    baseline: int
    base: GenerationRequest  # the starting request, defaults filled in and the seed fixed

    @property
    def seed(self) -> int:
        return self.base.seed

    def definition(self) -> dict:
        """The experiment file that runs this plan again: the drawn seed and the defaults written out."""
        data = self.experiment.to_dict()
        data["base"] = {k: v for k, v in self.base.to_dict().items() if k not in ("save", "batch_size", "batch_count")}
        for name in IMAGE_FIELDS:  # an init image / mask given as a file runs again from that file
            if isinstance(self.experiment.base.get(name), str):
                data["base"][name] = self.experiment.base[name]
        return data

    @property
    def shape(self) -> tuple[int, int, int]:
        sizes = [len(a.values) for a in self.axes] + [1, 1, 1]
        return sizes[0], sizes[1], sizes[2]

    @property
    def warmup_models(self) -> list[str]:
        """The models that get an untimed warm-up run (the first cell of each, in run order)."""
        if not self.experiment.warmup:
            return []
        return list(dict.fromkeys(self.cells[i].request.model for i in self.run_order))

    @property
    def total_runs(self) -> int:
        return len(self.warmup_models) + len(self.cells) * self.experiment.repeats


def cell_count(experiment: Experiment) -> int:
    """How many cells the axes make (parsing only; for the confirmation above the Settings limit)."""
    count = 1
    for spec in experiment.axes[:3]:
        count *= len(parse_values(find_setting(spec.setting), spec.values))
    return count


def cell_labels(experiment: Experiment) -> list[str]:
    """The cells' labels in grid order (parsing only): the baseline picker's choices."""
    axes = [(find_setting(s.setting), parse_values(find_setting(s.setting), s.values)) for s in experiment.axes[:3]]
    return [cell_label([(setting, values[i]) for (setting, values), i in zip(axes, picks)])
            for picks in grid_picks([len(values) for _, values in axes])]


def grid_picks(sizes: list[int]):
    """Each cell's value index per axis, in grid order: X fastest, then Y, then Z."""
    for combo in itertools.product(*[range(n) for n in reversed(sizes)]):
        yield tuple(reversed(combo))


def cell_label(settings_and_values) -> str:
    return ", ".join(setting.describe(value) for setting, value in settings_and_values) or "starting settings"


def build_plan(experiment: Experiment, manager, rng: random.Random | None = None) -> Plan:
    """Check everything and lay out the cells; raises InvalidRequest before anything runs."""
    if len(experiment.axes) > len(AXIS_NAMES):
        raise InvalidRequest(f"An experiment has at most {len(AXIS_NAMES)} axes (X, Y, Z); got {len(experiment.axes)}.")
    if not 1 <= experiment.repeats <= MAX_REPEATS:
        raise InvalidRequest(f"Repeats must be between 1 and {MAX_REPEATS}, got {experiment.repeats}.")
    base, face, notes = starting_point(experiment, manager, rng)
    axes = tuple(_checked_axis(name, spec, base, face, manager) for name, spec in zip(AXIS_NAMES, experiment.axes))
    _refuse_overlaps(axes)
    _refuse_idle_detailer(axes, base)
    _refuse_idle_hires(axes, base)
    _refuse_idle_refiner(axes, base)
    cells = tuple(_cells(axes, base, face, manager, tuple(notes)))
    if face is not None:
        _require_face_files(cells, manager)
    if not 0 <= experiment.baseline < len(cells):
        raise InvalidRequest(f"The baseline cell must be between 0 and {len(cells) - 1} (grid order, X fastest); got {experiment.baseline}.")
    loaded = [record.name for record in manager.cache.records()]
    return Plan(experiment, axes, cells, tuple(order_cells(cells, loaded)), experiment.baseline, base)


def starting_point(experiment: Experiment, manager, rng: random.Random | None = None) -> tuple[GenerationRequest, FaceOptions | None, list[str]]:
    """The starting request (family defaults filled in, one image, not saved, a fixed seed) and face."""
    values = dict(experiment.base)
    unknown = set(values) - REQUEST_FIELDS
    if unknown:
        raise InvalidRequest(f"Unknown starting settings: {', '.join(sorted(unknown))}; use the names of `app.py generate`'s options.")
    values.setdefault("prompt", "")
    model = values.get("model") or manager.default_model()
    entry = _installed(model, manager, "The starting model")
    spec = entry.family.spec
    values.update(model=model, batch_size=1, batch_count=1, save=False)
    for name, default in (("width", spec.default_size[0]), ("height", spec.default_size[1]), ("steps", spec.default_steps),
                          ("cfg_scale", spec.default_cfg), ("sampler", spec.default_sampler)):
        if values.get(name) is None:
            values[name] = default
    notes = []
    if experiment.base.get("batch_size", 1) != 1 or experiment.base.get("batch_count", 1) != 1:
        notes.append("Each cell makes one image: the batch size and count were set to 1.")
    if values.get("seed", -1) == -1:
        values["seed"] = random_seed(rng)
    for name, what in (("init_image", "The starting init image"), ("mask", "The starting mask")):
        if isinstance(values.get(name), (str, Path)):  # a file's path in an experiment file: opened header-first, as the CLI does
            values[name] = open_input_image(values[name], manager.config.max_input_pixels, what)
    try:
        base = GenerationRequest(**values)
        validate_request(base, entry.family)
    except TypeError as error:
        raise InvalidRequest(f"The starting settings are not valid: {error}.") from None
    except InvalidRequest as error:
        raise InvalidRequest(f"The starting settings are not valid: {error}") from None
    return base, _face_options(experiment.face), notes


def _require_face_files(cells, manager) -> None:
    """Say which face files are missing now, not after the first cell has loaded its model."""
    for family in dict.fromkeys(manager.entry(cell.request.model).family for cell in cells):
        missing = manager.face.missing(family.value)
        if missing:
            raise InvalidRequest(missing)


def _face_options(face: dict | None) -> FaceOptions | None:
    if not face:
        return None
    unknown = set(face) - FACE_FIELDS
    if unknown:
        raise InvalidRequest(f"Unknown face settings: {', '.join(sorted(unknown))}.")
    values = dict(face)
    photos = values.get("photos") or ()
    if isinstance(photos, str):
        photos = (photos,)
    if not photos:
        raise InvalidRequest("The face reference has no photos; add 1 to 4 photo paths or leave the face out.")
    values["photos"] = tuple(photos)
    values["face_index"] = tuple(values.get("face_index") or ())
    try:
        return FaceOptions(**values)
    except TypeError as error:
        raise InvalidRequest(f"The face settings are not valid: {error}.") from None


def _installed(model: str, manager, what: str):
    names = [e.name for e in manager.models() if e.usable]
    try:
        entry = manager.entry(model)
    except LikenessError:
        raise InvalidRequest(f"{what} {model!r} is not installed. Installed: {', '.join(names) or 'none'}.") from None
    if not entry.usable:
        raise InvalidRequest(f"{what} {model!r} cannot be used: {entry.problem}")
    return entry


def apply_value(request: GenerationRequest, face: FaceOptions | None, setting: Setting, value):
    """The request and face options with one axis value set."""
    if setting.target == "face":
        return request, replace(face, **{setting.field: value})
    if setting.kind == "size":
        return replace(request, width=value[0], height=value[1]), face
    if setting.key == "prompt_sr":  # A1111's Prompt S/R: the search string replaced in both prompts
        search, replacement = value
        return replace(request, prompt=request.prompt.replace(search, replacement),
                       negative_prompt=request.negative_prompt.replace(search, replacement)), face
    if setting.key == "lora_weight":
        return replace(request, prompt=reweight_lora_tags(request.prompt, value)[0]), face
    if setting.key == "prompt_order":
        return replace(request, prompt=reordered_prompt(request.prompt, value)), face
    if setting.key == "styles":  # A1111's Styles axis adds the cell's style to the ones chosen
        return replace(request, styles=tuple(request.styles) + (() if value == NO_STYLE else (value,))), face
    return replace(request, **{setting.field: value}), face


def fragment_places(prompt: str, fragments) -> list[tuple[int, str]] | str:
    """Where each fragment first occurs in `prompt`, earliest first; or why they cannot be reordered (one is missing,
    two overlap)."""
    places = sorted((prompt.find(fragment), fragment) for fragment in fragments)
    missing = [fragment for start, fragment in places if start < 0]
    if missing:
        return f"{missing[0]!r} is not in the prompt; each value is a fragment of the prompt whose place the cells change."
    for (start, fragment), (next_start, following) in zip(places, places[1:]):
        if start + len(fragment) > next_start:
            return f"{fragment!r} and {following!r} overlap in the prompt; name fragments that do not share words."
    return places


def reordered_prompt(prompt: str, order: tuple[str, ...]) -> str:
    """A1111's Prompt order: the places the fragments hold in the prompt, earliest first, are filled with the
    fragments in `order`; the text between them stays."""
    places = fragment_places(prompt, order)
    if isinstance(places, str):  # another axis (Prompt S/R) changed the prompt under this one
        raise InvalidRequest(f"Prompt order: {places}")
    pieces, end = [], 0
    for (start, fragment), placed in zip(places, order):
        pieces += [prompt[end:start], placed]
        end = start + len(fragment)
    return "".join(pieces) + prompt[end:]


def _prompt_edit_problem(setting: Setting, values: list, base: GenerationRequest) -> str | None:
    """Why a Prompt S/R, Prompt order or LoRA weight axis cannot edit the starting prompt, or None."""
    if setting.key == "prompt_sr":
        search = values[0][0]
        if search not in base.prompt and search not in base.negative_prompt:
            return f"Prompt S/R: {search!r} is not in the prompt (nor the negative prompt); its first value is the text to replace."
    if setting.key == "prompt_order" and isinstance(places := fragment_places(base.prompt, values[0]), str):
        return f"Prompt order: {places}"
    if setting.key == "lora_weight":
        try:
            _, refs = extract_lora_tags(base.prompt)
        except ValueError:
            refs = []
        if not refs:
            return "LoRA weight: the prompt has no <lora:name:weight> tag for this axis to set; add one."
    return None


def _checked_axis(name: str, spec: AxisSpec, base: GenerationRequest, face: FaceOptions | None, manager) -> Axis:
    try:
        setting = find_setting(spec.setting)
        values = parse_values(setting, spec.values)
    except InvalidRequest as error:
        raise InvalidRequest(f"{name} axis: {error}") from None
    if setting.target == "face" and face is None:
        raise InvalidRequest(f"{name} axis ({setting.label}) needs a face reference: add a photo, or choose another setting.")
    if setting.key == "denoising_strength" and base.init_image is None:
        raise InvalidRequest(f"{name} axis (Denoising strength) changes nothing without an init image: add init_image (a picture's path) "
                             "to the starting settings; for text-to-image with hires fix, vary Hires denoising.")
    if setting.target == "prompt" and (problem := _prompt_edit_problem(setting, values, base)):
        raise InvalidRequest(f"{name} axis: {problem}")
    for value in values:
        if setting.key == "model":
            _installed(value, manager, f"{name} axis (Model): the model")
        problem = _value_problem(setting, value, base, face, manager)
        if problem:
            raise InvalidRequest(f"{name} axis ({setting.label}): {setting.format(value)!r} is not valid: {problem}")
    if len(set(map(setting.format, values))) < len(values):
        raise InvalidRequest(f"{name} axis ({setting.label}) repeats a value ({spec.values!r}); each value makes one row or column.")
    return Axis(name, setting, tuple(values))


def _value_problem(setting: Setting, value, base: GenerationRequest, face: FaceOptions | None, manager) -> str | None:
    """Why `value` cannot be used with the starting settings, or None."""
    if setting.key == "pulid_weight" and not 0 <= value <= MAX_PULID_WEIGHT:
        return f"the PuLID weight must be between 0 and {MAX_PULID_WEIGHT:g} (SDXL; FLUX.1 uses 0-3)."
    if setting.key == "pulid_weight":  # the starting model's family range: FLUX.1 0-3, as its official app
        family = manager.entry(base.model).family
        if (limits := ID_WEIGHTS.get(family)) and (problem := limits.problem(value, family.spec.label)):
            return problem[0].lower() + problem[1:]
    if setting.key == "pulid_start_step" and not 0 <= value < base.steps:
        return f"the PuLID start step must be between 0 and {base.steps - 1} (the steps minus one)."
    if setting.key == "lora_weight" and not abs(value) <= MAX_LORA_WEIGHT:
        return f"the LoRA weight must be between -{MAX_LORA_WEIGHT:g} and {MAX_LORA_WEIGHT:g}."
    if setting.key == "styles" and value != NO_STYLE and (problem := _style_problem(value, manager)):
        return problem
    if setting.key == "hires_checkpoint" and (problem := _hires_checkpoint_problem(value, base, manager)):
        return problem
    if setting.key == "refiner_checkpoint" and (problem := _refiner_problem(value, base, manager)):
        return problem
    if setting.key == "hires_upscaler":  # a name of this models folder's, checked now rather than failing its cells
        from pipelines.upscale import find_upscaler  # torch: not before an experiment file is read (the CLI reads it first)

        try:
            find_upscaler(value, manager.config.models_dir, manager.config.allow_pickle)
        except InvalidRequest as error:
            return str(error)
    if setting.target == "face":
        return None
    request, _ = apply_value(base, face, setting, value)
    request, _note = _fit_sampler(request, manager, sampler_on_axis=setting.key == "sampler", schedule_on_axis=setting.key == "schedule_type")
    try:
        validate_request(request, manager.entry(request.model).family)
    except InvalidRequest as error:
        return str(error)
    return None


def _hires_checkpoint_problem(name: str, base: GenerationRequest, manager) -> str | None:
    """Why `name` cannot run the hires pass after the starting model's first pass (the manager's own check, now)."""
    try:
        manager.check_hires_checkpoint(replace(base, hires_checkpoint=name, hires_scale=max(base.hires_scale, 2.0)))
    except LikenessError as error:
        return str(error)
    return None


def _refiner_problem(name: str, base: GenerationRequest, manager) -> str | None:
    """Why `name` cannot take over from the starting model (installed, of its family: the manager's own check, now)."""
    try:
        manager.check_refiner(replace(base, refiner_checkpoint=name))
    except LikenessError as error:
        return str(error)
    return None


def _style_problem(name: str, manager) -> str | None:
    """Why `name` is no style of the styles file (its read error, when it cannot be read), or None."""
    try:
        names = [style.name for style in manager.styles.styles()]
    except InvalidRequest as error:
        return str(error)
    if name in names:
        return None
    listed = ", ".join(repr(n) for n in names[:20]) + (", ..." if len(names) > 20 else "")
    return (f"there is no style named {name!r} in {manager.styles.path}; styles: {listed or 'none yet'} "
            f"({NO_STYLE!r}: the cell adds no style).")


def _fit_sampler(request: GenerationRequest, manager, sampler_on_axis: bool, schedule_on_axis: bool = False
                 ) -> tuple[GenerationRequest, str | None]:
    """A model axis may cross families (SD 1.5 -> FLUX.1): a sampler the family lacks becomes its default; a schedule
    type the cell's sampler lacks (Karras with DDIM) becomes Automatic, unless that axis is the one being tried."""
    family = manager.entry(request.model).family
    notes = []
    if not sampler_on_axis and not has_sampler(family, request.sampler):
        default = family.spec.default_sampler
        notes.append(f"{request.model} uses {default} ({request.sampler} is not available for {family.spec.label}).")
        request = replace(request, sampler=default)
    schedule = find_schedule_type(request.schedule_type)
    if not schedule_on_axis and schedule is not None and has_sampler(family, request.sampler):
        sampler = find_sampler(family, request.sampler)
        if schedule not in sampler.schedules:
            notes.append(f"{sampler.name} runs the {AUTOMATIC} schedule type ({schedule} is not available with it).")
            request = replace(request, schedule_type=AUTOMATIC)
    return request, " ".join(notes) or None


def _refuse_overlaps(axes: tuple[Axis, ...]) -> None:
    """Two axes setting the same field would silently overwrite each other.

    Prompt S/R, Prompt order and LoRA weight edit the prompt, so they do not go with a Prompt axis (which replaces it);
    two Prompt S/R axes are fine (as in A1111) unless they search for the same text; Styles axes add up.
    """
    prompt_axis = next((a for a in axes if a.setting.key == "prompt"), None)
    editor = next((a for a in axes if a.setting.target == "prompt"), None)
    if prompt_axis and editor:
        raise InvalidRequest(f"The {prompt_axis.name} axis replaces the prompt the {editor.name} axis ({editor.setting.label}) edits; "
                             "use one of them (write the prompt in the starting settings).")
    claimed: dict[str, str] = {}
    for axis in axes:
        if axis.setting.key == "styles":
            continue  # each Styles axis adds its style to the others' (A1111's too)
        if axis.setting.key == "prompt_sr":
            targets = (f"the prompt's {axis.values[0][0]!r}",)
        else:
            targets = ("width", "height") if axis.setting.kind == "size" else (axis.setting.field,)
        for target in targets:
            if target in claimed:
                raise InvalidRequest(f"The {claimed[target]} and {axis.name} axes both set {target}; use one axis per setting.")
            claimed[target] = axis.name


def _refuse_idle_detailer(axes: tuple[Axis, ...], base: GenerationRequest) -> None:
    """A Face detailer strength axis with the detailer off in every cell would make a grid of identical pictures."""
    switched_on = base.face_detail or any(a.setting.key == "face_detail" and True in a.values for a in axes)
    for axis in axes:
        if axis.setting.key == "face_detail_strength" and not switched_on:
            raise InvalidRequest(f"The {axis.name} axis (Face detailer strength) changes nothing with the face detailer off: "
                                 "turn it on in the starting settings, or add a Face detailer axis.")


HIRES_ONLY = ("hires_denoising", "hires_steps", "hires_upscaler", "hires_sampler", "hires_checkpoint")


def _refuse_idle_hires(axes: tuple[Axis, ...], base: GenerationRequest) -> None:
    """A hires pass setting on an axis with hires fix off in every cell would make a grid of identical pictures."""
    switched_on = hires_on(base) or any(a.setting.key == "hires_scale" and any(v > 1 for v in a.values) for a in axes)
    for axis in axes:
        if axis.setting.key in HIRES_ONLY and not switched_on:
            raise InvalidRequest(f"The {axis.name} axis ({axis.setting.label}) changes nothing with hires fix off: set Hires scale "
                                 "above 1 in the starting settings (hires_scale), or add a Hires scale axis.")


def _refuse_idle_refiner(axes: tuple[Axis, ...], base: GenerationRequest) -> None:
    """A Refiner switch at axis without a refiner in any cell would make a grid of identical pictures."""
    chosen = refiner_name(base) is not None or any(a.setting.key == "refiner_checkpoint" and any(refiner_name(replace(base, refiner_checkpoint=v))
                                                                                                for v in a.values) for a in axes)
    for axis in axes:
        if axis.setting.key == "refiner_switch_at" and not chosen:
            raise InvalidRequest(f"The {axis.name} axis (Refiner switch at) changes nothing without a refiner: choose one in the starting "
                                 "settings (refiner_checkpoint), or add a Refiner checkpoint axis.")


def _cells(axes: tuple[Axis, ...], base: GenerationRequest, face: FaceOptions | None, manager, notes: tuple[str, ...]):
    """Every combination in grid order (X fastest), each checked as a whole request."""
    sampler_on_axis = any(a.setting.key == "sampler" for a in axes)
    schedule_on_axis = any(a.setting.key == "schedule_type" for a in axes)
    for index, picks in enumerate(grid_picks([len(a.values) for a in axes])):
        request, cell_face = base, face
        label = cell_label([(axis.setting, axis.values[pick]) for axis, pick in zip(axes, picks)])
        try:
            for axis, pick in zip(axes, picks):
                request, cell_face = apply_value(request, cell_face, axis.setting, axis.values[pick])
        except InvalidRequest as error:  # a Prompt order whose fragment another axis replaced
            raise InvalidRequest(f"The cell {label} is not valid: {error}") from None
        request, note = _fit_sampler(request, manager, sampler_on_axis, schedule_on_axis)
        family = manager.entry(request.model).family
        try:
            validate_request(request, family)
        except InvalidRequest as error:
            raise InvalidRequest(f"The cell {label} is not valid: {error}") from None
        if cell_face is not None and not 0 <= cell_face.start_step < request.steps:
            raise InvalidRequest(f"The cell {label} is not valid: the PuLID start step {cell_face.start_step} must be below its {request.steps} steps.")
        if cell_face is not None and family.value not in ("sdxl", "flux"):
            raise InvalidRequest(f"The cell {label} is not valid: PuLID face reference works with SDXL and FLUX.1 models; {request.model} is {family.spec.label}.")
        coords = tuple(picks) + (0,) * (3 - len(picks))
        yield Cell(index, coords, request, cell_face, label, notes + ((note,) if note else ()))


def order_cells(cells, loaded_models=()) -> list[int]:
    """The run order: grid order, regrouped by model so each model is loaded once.

    Models already loaded go first (no load at all), then the others in the order they first
    appear in the grid. Within a model the grid order is kept.
    """
    loaded = set(loaded_models)
    first_seen: dict[str, int] = {}
    for cell in cells:
        first_seen.setdefault(cell.request.model, len(first_seen))
    return sorted(range(len(cells)), key=lambda i: (cells[i].request.model not in loaded, first_seen[cells[i].request.model], i))


def axis_choices(key: str, manager, model: str | None = None) -> list[str]:
    """Every value a setting can take here, for A1111's "fill" button of an axis: the samplers of `model`'s family
    (the starting model's), the installed models, styles, upscalers and VAE files; [] for a setting without a fixed
    list (numbers, prompts)."""
    from pipelines.samplers import sampler_names  # the choices of a family: a list of names, no torch
    from pipelines.upscale import list_upscalers
    from pipelines.vae_files import vae_names

    setting = find_setting(key)
    try:
        family = manager.entry(model or manager.default_model()).family
    except LikenessError:
        family = None
    if setting.key == "model":
        return manager.model_names()
    if setting.key == "hires_checkpoint":
        return manager.hires_checkpoint_choices(family)
    if setting.key == "refiner_checkpoint":
        return manager.refiner_choices(family)
    if setting.key == "styles":
        return [NO_STYLE, *manager.styles.names()]
    if setting.key == "hires_upscaler":
        return [c.name for c in list_upscalers(manager.config.models_dir, manager.config.allow_pickle) if c.usable]
    if setting.key == "vae":
        return vae_names(manager.config.models_dir, manager.config.allow_pickle)
    if setting.key == "sampler" and family is not None:
        return sampler_names(family)
    if setting.key == "hires_sampler" and family is not None:
        return [HIRES_SAME_SAMPLER, *sampler_names(family)]
    if setting.kind == "bool":
        return ["on", "off"]
    return list(setting.choices)


def values_text(values: list[str]) -> str:
    """Values as an axis reads them: comma-separated, a value with a comma in quotes (A1111's CSV)."""
    quoted = ('"' + value.replace('"', '""') + '"' if "," in value or '"' in value else value for value in values)
    return ", ".join(quoted)

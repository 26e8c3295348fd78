"""The Face tab's controls for one generation, and the official apps' ranges they are checked against.

Light on purpose (no torch): the CLI parser reads these defaults, and a request is checked against
them before any face model loads.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pipelines.choices import ORTHO_MODES
from pipelines.errors import InvalidRequest
from pipelines.families import Family

MAX_PHOTOS = 4


@dataclass(frozen=True)
class IdWeightRange:
    """The ID weight control of one official PuLID app."""

    default: float
    maximum: float

    def problem(self, value: float, label: str) -> str | None:
        if 0 <= value <= self.maximum:
            return None
        return f"The ID weight for {label} models must be between 0 and {self.maximum:g}; got {value:g}."


# The official apps' sliders: SDXL v1.1 `id_scale` 0-5, default 0.8 (app_v1_1.py); PuLID-FLUX
# `id weight` 0-3, default 1 (app_flux.py).
ID_WEIGHTS = {Family.SDXL: IdWeightRange(0.8, 5.0), Family.FLUX: IdWeightRange(1.0, 3.0)}
MAX_ID_WEIGHT = max(r.maximum for r in ID_WEIGHTS.values())


def default_id_weight(family: Family | str | None) -> float:
    """The official default ID weight for a model family (SDXL's for anything else)."""
    try:
        return ID_WEIGHTS.get(Family(family), ID_WEIGHTS[Family.SDXL]).default
    except ValueError:
        return ID_WEIGHTS[Family.SDXL].default


@dataclass(frozen=True)
class FaceOptions:
    """The Face tab's controls for one generation (defaults: the official apps').

    `id_weight` None means the model family's official default (SDXL 0.8, FLUX.1 1.0): the manager
    resolves it, and checks the family's range, with `for_family` before any model loads.
    """

    photos: tuple = ()  # paths, bytes or PIL images; 1-4
    face_index: tuple[int, ...] = ()  # per photo: which detected face (0 = the largest)
    id_weight: float | None = None  # SDXL id_scale (0-5, 0.8) / FLUX id_weight (0-3, 1.0); None = the family's default
    start_step: int = 0
    num_zero: int = 20  # SDXL only
    ortho: str = "v2"  # SDXL only: off / v1 / v2
    true_cfg: float = 1.0  # FLUX only: true CFG scale with the negative prompt (1 = off)
    true_cfg_start: int = 1  # FLUX only: first step of true CFG (the official app's default)

    def __post_init__(self):
        """The ranges of the official apps' controls; a value outside is a message, never a traceback."""
        weight = "none" if self.id_weight is None else f"{self.id_weight:g}"
        checks = (
            (self.id_weight is None or 0 <= self.id_weight <= MAX_ID_WEIGHT,
             f"The ID weight must be between 0 and {MAX_ID_WEIGHT:g} (FLUX.1: 0-{ID_WEIGHTS[Family.FLUX].maximum:g}); got {weight}."),
            (self.start_step >= 0, f"The PuLID start step must be 0 or more; got {self.start_step}."),
            (0 <= self.num_zero <= 80, f"Num zero must be between 0 and 80; got {self.num_zero}."),
            (self.ortho in ORTHO_MODES, f"Ortho must be {', '.join(ORTHO_MODES[:-1])} or {ORTHO_MODES[-1]}; got {self.ortho!r}."),
            (1 <= self.true_cfg <= 10, f"True CFG must be between 1 (off) and 10; got {self.true_cfg:g}."),
            (self.true_cfg_start >= 0, f"The true CFG start step must be 0 or more; got {self.true_cfg_start}."),
        )
        for ok, message in checks:
            if not ok:
                raise InvalidRequest(message)

    def for_family(self, family: Family | str) -> "FaceOptions":
        """These options for a model of `family`: the ID weight defaulted and range-checked as that
        family's official app does (FLUX.1: 0-3, default 1; SDXL: 0-5, default 0.8). Other families
        are returned as they are (the manager refuses them with its own message)."""
        limits = ID_WEIGHTS.get(Family(family))
        if limits is None:
            return self
        if self.id_weight is None:
            return dataclasses.replace(self, id_weight=limits.default)
        if problem := limits.problem(self.id_weight, Family(family).spec.label):
            raise InvalidRequest(problem)
        return self

    def index_for(self, photo: int) -> int:
        return self.face_index[photo] if photo < len(self.face_index) else 0

"""The stages that run once per generation, before the hooks attach: face embed and text encode."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from pipelines.families import Family
from pipelines.generate import encode_prompts, prompt_token_warnings
from pipelines.hooks.prompt_schedule import PromptScheduleHook
from pipelines.hooks.true_cfg_gate import TrueCfgGateHook
from pipelines.prompts.embeddings import ti_hashes
from pipelines.prompts.encode import clip_skip_layers
from pipelines.prompts.schedule import segment_schedule
from pipelines.prompts.syntax import flux_text, prompt_memo_key
from pipelines.request import conditioning_key
from pipelines.telemetry import Notice


@dataclass
class FaceEmbed:
    """The reference face's ID embedding (memoized by photo content) and the PuLID hook built from it.

    `build()` returns (hook, identity) for the plan's model; the manager supplies it, since the face
    service and its model files are the manager's. Runs before text encode: PuLID-FLUX's true CFG
    decides whether the negative prompt is encoded.
    """

    build: Callable[[], tuple]
    face: object  # FaceOptions
    provider: Callable[[], str | None] = lambda: None  # the onnxruntime provider the detector last ran on
    name: str = "face embed"

    def wanted(self, plan) -> bool:
        return True

    def run(self, plan, state, info: dict) -> None:
        hook, identity = self.build()
        info["detail"] = "memoized" if identity.from_memo else f"computed ({self.provider() or 'cpu'})"
        for note in identity.notes:
            plan.bus.publish(Notice(note, "warning"))
        options, face = plan.options, self.face
        hooks = [hook]
        if plan.model.family is Family.FLUX and face.true_cfg > 1:
            options.true_cfg_scale = face.true_cfg
            hooks.append(TrueCfgGateHook(face.true_cfg_start, face.true_cfg))
            options.infotext_extra["True CFG"] = f"{face.true_cfg:g} from step {face.true_cfg_start}"
        options.hooks[0:0] = hooks  # before the caches' hooks: a block cache must see PuLID's blocks
        options.infotext_extra.update({"PuLID weight": f"{face.id_weight:g}", "PuLID start step": face.start_step, "Face hash": identity.digest})


class TextEncode:
    """A1111's prompt syntax on SD 1.5 / SDXL (chunks, weights, textual inversions), T5 + CLIP on FLUX.1;
    memoized by the parsed prompt and everything that changes the encoders (model, LoRA set)."""

    name = "text encode"

    def wanted(self, plan) -> bool:
        return True

    def run(self, plan, state, info: dict) -> None:
        request = plan.request
        state.prompt, memo_note, used = encode_schedule(plan, request.prompt, request.negative_prompt, request.steps, request.batch_size,
                                                        warn=state.warnings)
        state.embeds = state.prompt.embeds
        state.inversions = used
        if used:
            plan.options.infotext_extra["TI hashes"] = ti_hashes(used)
        if memo_note:
            state.cache_notes["prompt memo"] = memo_note
        notes = [state.prompt.describe() if state.prompt.edited else "", f"prompt memo {memo_note}" if memo_note else ""]
        if any(notes):
            info["detail"] = "; ".join(filter(None, notes))
        for text in state.warnings:
            plan.bus.publish(Notice(text, "warning"))


@dataclass
class EncodedPrompt:
    """A pass's encoded prompt: the pipeline's keyword arguments (the first segment's) and, with A1111's prompt
    editing, every segment as (last step, embeds), which the hook from `hooks()` swaps in at their steps."""

    embeds: dict
    segments: list[tuple[int, dict]] = field(default_factory=list)  # empty: one prompt for the whole pass
    texts: list[tuple[int, str, str]] = field(default_factory=list)  # (last step, prompt, negative) per segment

    @property
    def edited(self) -> bool:
        return len(self.segments) > 1

    def hooks(self, plan, first_step: int) -> list:
        """The prompt-editing hook for a pass whose step 0 is `first_step` of the readout's count; none without editing."""
        return [PromptScheduleHook(self.segments, first_step, plan.model.family is Family.FLUX)] if self.edited else []

    def describe(self) -> str:
        """'prompt editing: 3 prompts (steps 0-5, 6-12, 13-19)', for the readout."""
        spans, start = [], 0
        for index, (last_step, _prompt, _negative) in enumerate(self.texts):
            end = last_step - 1 if index == len(self.texts) - 1 else last_step  # the last entry lasts to `steps`: 0-based, one less
            spans.append(f"{start}-{end}" if end > start else f"{start}")
            start = last_step + 1
        return f"prompt editing: {len(self.texts)} prompts (steps {', '.join(spans)})"


def encode_schedule(plan, prompt: str, negative: str, steps: int, batch_size: int, first_pass_steps: int | None = None,
                    warn: list | None = None) -> tuple[EncodedPrompt, str | None, list]:
    """`prompt` and `negative` for a pass of `steps` steps: each segment of their prompt editing (one without it)
    encoded through the prompt memo. Returns (the encoded prompt, the memo's "hit" / "miss" (a miss when any segment
    missed) or None, the textual inversions used). `warn` collects what the model will not read of each segment."""
    segments = segment_schedule(prompt, negative, steps, first_pass_steps)
    encoded, notes, used_all = [], set(), []
    for segment in segments:
        if warn is not None:
            warn += [text for text in prompt_warnings(plan, segment.prompt, segment.negative) if text not in warn]
        embeds, note, used = encode_prompt(plan, segment.prompt, segment.negative, batch_size)
        encoded.append((segment.last_step, embeds))
        notes.add(note)
        used_all += [item for item in used if item not in used_all]
    memo_note = None if notes == {None} else "miss" if "miss" in notes else "hit"
    texts = [(segment.last_step, segment.prompt, segment.negative) for segment in segments]
    return EncodedPrompt(encoded[0][1], encoded if len(encoded) > 1 else [], texts), memo_note, used_all


def prompt_warnings(plan, prompt: str, negative: str) -> list[str]:
    """What the model will not read of a prompt as written (FLUX.1: the negative prompt, weights, long prompts)."""
    model = plan.model
    warnings = []
    if model.family is Family.FLUX and negative and not plan.true_cfg:
        warnings.append("FLUX.1 uses distilled guidance and ignores the negative prompt.")
    warnings += prompt_token_warnings(model, prompt, negative)
    encoder, clip_skip = getattr(model.pipe, "text_encoder", None), plan.request.clip_skip
    layers = clip_skip_layers(encoder) if encoder is not None else clip_skip
    if clip_skip > layers:
        warnings.append(f"Clip skip {clip_skip} goes past this text encoder's {layers} layers; its first layer is used (clip skip {layers}).")
    if model.family is Family.FLUX and (flux_text(prompt)[1] or (plan.true_cfg and flux_text(negative)[1])):
        warnings.append("FLUX.1 ignores prompt weights: (word:1.2), [word] and BREAK are read as the plain words.")
    return warnings


def encode_prompt(plan, prompt: str, negative: str, batch_size: int) -> tuple[dict, str | None, list]:
    """`prompt` and `negative` as pipeline keyword arguments for `batch_size` images, through the prompt memo
    (keyed by the parsed prompt, the textual inversions it names, the model and its LoRA set).

    Returns (embeds on the device, "hit" / "miss" or None without a memo, the textual inversions used).
    The text encode stage and the face detailer's own prompt both encode through here."""
    model, options = plan.model, plan.options
    used = options.embeddings.used_in(prompt, negative) if options.embeddings and model.family is not Family.FLUX else []
    use_cfg = plan.use_cfg

    def encode() -> dict:
        return encode_prompts(model, prompt, negative, batch_size, use_cfg, used, plan.request.clip_skip)

    if options.prompt_memo is None:
        return encode(), None, used
    key = (model.identity, prompt_memo_key(prompt, negative, tuple((e.name, e.shorthash) for e in used)), batch_size, use_cfg)
    key += conditioning_key(plan.request)
    embeds, hit = options.prompt_memo.get_or_compute(key, encode)
    # Without CFG the negative embeddings are None.
    return {name: None if tensor is None else tensor.to(model.device) for name, tensor in embeds.items()}, "hit" if hit else "miss", used

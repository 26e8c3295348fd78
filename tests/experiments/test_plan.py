"""Experiment definitions and plans: every value checked before anything runs, cells in order."""
from __future__ import annotations

import random

import pytest

from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.errors import InvalidRequest
from pipelines.experiments.plan import AxisSpec, Experiment, build_plan, cell_count, cell_labels, order_cells

BASE = {"model": DEMO_MODEL_NAME, "prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "seed": 11}


def experiment(*axes, **options) -> Experiment:
    return Experiment(dict(BASE, **options.pop("base", {})), [AxisSpec(s, v) for s, v in axes], **options)


def test_cells_in_grid_order_with_x_fastest(shared_manager):
    plan = build_plan(experiment(("steps", "2,3"), ("cfg_scale", "1, 7"), ("sampler", "Euler, DDIM")), shared_manager)
    assert plan.shape == (2, 2, 2)
    assert [c.coords for c in plan.cells[:4]] == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)]
    last = plan.cells[-1].request
    assert (last.steps, last.cfg_scale, last.sampler) == (3, 7.0, "DDIM")
    assert plan.cells[5].label == "Steps: 3, CFG scale: 1, Sampler: DDIM"
    assert cell_labels(plan.experiment) == [c.label for c in plan.cells]
    assert cell_count(plan.experiment) == 8


def test_every_cell_has_the_same_seed_even_when_random(shared_manager):
    plan = build_plan(experiment(("steps", "2,3"), ("cfg_scale", "1, 7"), base={"seed": -1}), shared_manager, random.Random(5))
    seeds = {cell.request.seed for cell in plan.cells}
    assert seeds == {plan.seed} and plan.seed != -1
    assert plan.definition()["base"]["seed"] == plan.seed  # the re-run file reproduces the grid


def test_cells_make_one_unsaved_image_each(shared_manager):
    plan = build_plan(experiment(("steps", "2,3"), base={"batch_size": 4, "batch_count": 2}), shared_manager)
    assert all(c.request.batch_size == 1 and c.request.batch_count == 1 and not c.request.save for c in plan.cells)
    assert any("batch size and count were set to 1" in note for note in plan.cells[0].notes)


def test_model_axis_groups_cells_so_each_model_loads_once(shared_manager):
    # Model on X (the fastest axis): grid order alternates the models, the run order does not.
    plan = build_plan(experiment(("model", f"tiny-sd15, {DEMO_MODEL_NAME}"), ("cfg_scale", "1, 5, 7")), shared_manager)
    grid_models = [c.request.model for c in plan.cells]
    assert grid_models[:4] == ["tiny-sd15", DEMO_MODEL_NAME, "tiny-sd15", DEMO_MODEL_NAME]
    run_models = [plan.cells[i].request.model for i in plan.run_order]
    switches = sum(1 for a, b in zip(run_models, run_models[1:]) if a != b)
    assert switches == 1
    assert sorted(plan.run_order) == list(range(6))
    assert plan.warmup_models == list(dict.fromkeys(run_models))
    assert plan.total_runs == 2 + 6


def test_loaded_model_runs_first():
    class Cell:
        def __init__(self, model):
            self.request = type("R", (), {"model": model})()

    cells = [Cell("a"), Cell("b"), Cell("a"), Cell("c"), Cell("b")]
    assert order_cells(cells) == [0, 2, 1, 4, 3]
    assert order_cells(cells, loaded_models=["b"]) == [1, 4, 0, 2, 3]


def test_model_axis_across_families_takes_each_familys_sampler(shared_manager):
    plan = build_plan(experiment(("model", f"{DEMO_MODEL_NAME}, tiny-flux"), base={"width": 256, "height": 256, "sampler": "Euler a"}), shared_manager)
    assert [c.request.sampler for c in plan.cells] == ["Euler a", "Flow Euler"]
    assert "Flow Euler" in plan.cells[1].notes[-1]


def test_a_schedule_type_axis_and_a_sampler_that_lacks_the_chosen_one(shared_manager):
    """A Schedule type axis sets each cell's; with the schedule type in the starting settings, a sampler axis value that
    cannot run it (DDIM steps through timesteps: no Karras) runs Automatic and the cell says so, as a model axis fits the sampler."""
    plan = build_plan(experiment(("schedule_type", "karras, SGM Uniform"), base={"sampler": "Euler"}), shared_manager)
    assert [c.request.schedule_type for c in plan.cells] == ["Karras", "SGM Uniform"]
    assert plan.cells[1].label == "Schedule type: SGM Uniform"
    plan = build_plan(experiment(("sampler", "DPM++ 2M, DDIM"), base={"sampler": "DPM++ 2M", "schedule_type": "Karras"}), shared_manager)
    assert [(c.request.sampler, c.request.schedule_type) for c in plan.cells] == [("DPM++ 2M", "Karras"), ("DDIM", "Automatic")]
    assert "DDIM runs the Automatic schedule type (Karras is not available with it)." in plan.cells[1].notes
    plan = build_plan(experiment(("hires_sampler", "use same sampler, DPM++ 2M"), base={"hires_scale": 2.0}), shared_manager)
    assert [(c.request.hires_sampler, c.label) for c in plan.cells] == [("Use same sampler", "Hires sampler: Use same sampler"),
                                                                        ("DPM++ 2M", "Hires sampler: DPM++ 2M")]
    with pytest.raises(InvalidRequest, match=r"X axis \(Schedule type\): 'Karras' is not valid: Schedule type Karras is not available "
                                             r"with DDIM"):
        build_plan(experiment(("schedule_type", "Automatic, Karras"), base={"sampler": "DDIM"}), shared_manager)


@pytest.mark.parametrize("axes, message", [
    ((("steps", "0-2"),), r"X axis \(Steps\): '0' is not valid: Steps must be between 1 and 150, got 0\."),
    ((("steps", "2"), ("width", "64, 100")), r"Y axis \(Width\): '100' is not valid: Width 100 is not a multiple of 8"),
    ((("cfg_scale", "1, 31"),), r"X axis \(CFG scale\): '31' is not valid: CFG scale must be between 0 and 30"),
    ((("model", f"{DEMO_MODEL_NAME}, sd-xl-base"),), r"X axis \(Model\): the model 'sd-xl-base' is not installed\. Installed: "),
    ((("sampler", "Flow Euler"),), r"'Flow Euler' is not valid: Sampler 'Flow Euler' is not available for Stable Diffusion 1\.5"),
    ((("flux_cache", "off, first-block"),), r"'first-block' is not valid: The FLUX block caches work on FLUX\.1 models"),
    ((("deepcache_interval", "1, 21"),), r"DeepCache N\): '21' is not valid"),
    ((("pulid_weight", "0.5, 1"),), r"X axis \(PuLID weight\) needs a face reference"),
    ((("steps", "2, 2"),), "repeats a value"),
    ((("size", "64"), ("width", "64, 128")), "both set width"),
    ((("steps", "1"), ("cfg_scale", "1"), ("seed", "1"), ("sampler", "Euler")), "at most 3 axes"),
    ((("colour", "red"),), "X axis: There is no experiment setting 'colour'"),
])
def test_bad_axis_values_are_refused_before_anything_runs(shared_manager, axes, message):
    generations_before = shared_manager.last_vae_dtype, shared_manager.cache.records()
    with pytest.raises(InvalidRequest, match=message):
        build_plan(experiment(*axes), shared_manager)
    assert (shared_manager.last_vae_dtype, shared_manager.cache.records()) == generations_before


def test_a_cell_invalid_as_a_whole_is_named(shared_manager):
    # Each value is fine with the starting settings, but tiny-sdxl cannot make 64x64 images.
    axes = ("model", f"{DEMO_MODEL_NAME}, tiny-sdxl"), ("size", "256, 64")
    with pytest.raises(InvalidRequest, match=r"The cell Model: tiny-sdxl, Size: 64x64 is not valid: Width 64 is outside 256-4096"):
        build_plan(experiment(*axes, base={"width": 256, "height": 256}), shared_manager)


def test_bad_starting_settings_and_options(shared_manager):
    with pytest.raises(InvalidRequest, match="starting model 'nope' is not installed"):
        build_plan(experiment(("steps", "2"), base={"model": "nope"}), shared_manager)
    with pytest.raises(InvalidRequest, match="Unknown starting settings: colour"):
        build_plan(experiment(("steps", "2"), base={"colour": 1}), shared_manager)
    with pytest.raises(InvalidRequest, match="Repeats must be between 1 and 20"):
        build_plan(experiment(("steps", "2"), repeats=0), shared_manager)
    with pytest.raises(InvalidRequest, match="baseline cell must be between 0 and 1"):
        build_plan(experiment(("steps", "2,3"), baseline=2), shared_manager)


def test_definition_round_trips_through_the_file_format(shared_manager):
    original = experiment(("steps", "2-3"), ("vae_dtype", "fp32, bf16"), repeats=2, warmup=False, baseline=3)
    again = Experiment.from_dict(original.to_dict())
    assert again == original
    listed = Experiment.from_dict({"base": BASE, "axes": [{"setting": "prompt", "values": ["a, b", "c"]}]})
    assert build_plan(listed, shared_manager).cells[0].request.prompt == "a, b"
    with pytest.raises(InvalidRequest, match="Unknown experiment entries: colour"):
        Experiment.from_dict({"base": BASE, "axes": [], "colour": 1})
    with pytest.raises(InvalidRequest, match="'repeats' must be a whole number"):
        Experiment.from_dict({"base": BASE, "axes": [], "repeats": 1.5})


def test_prompt_sr_replaces_the_search_string_in_both_prompts(shared_manager):
    plan = build_plan(experiment(("prompt_sr", 'lighthouse, barn, "red barn, at dusk"'),
                                 base={"negative_prompt": "blurry lighthouse"}), shared_manager)
    assert [c.request.prompt for c in plan.cells] == ["a lighthouse", "a barn", "a red barn, at dusk"]
    assert [c.request.negative_prompt for c in plan.cells] == ["blurry lighthouse", "blurry barn", "blurry red barn, at dusk"]
    assert [c.label for c in plan.cells] == ["Prompt S/R: lighthouse", "Prompt S/R: barn", "Prompt S/R: red barn, at dusk"]
    # Two S/R axes on different words combine, as in A1111 (each a plain text replace, applied X first).
    plan = build_plan(experiment(("prompt_sr", "lighthouse, tower"), ("prompt_sr", "a, one")), shared_manager)
    assert [c.request.prompt for c in plan.cells] == ["a lighthouse", "a tower", "one lighthouse", "one tower"]


def test_lora_weight_sets_every_lora_tag(shared_manager):
    prompt = "a lighthouse <lora:style:0.8> <lora:detail> <hypernet:h:1> <lora:x:1:te=0.5>"
    plan = build_plan(experiment(("lora_weight", "0, 0.5, -1"), base={"prompt": prompt}), shared_manager)
    assert plan.cells[1].request.prompt == "a lighthouse <lora:style:0.5> <lora:detail:0.5> <hypernet:h:1> <lora:x:0.5:te=0.5>"
    assert plan.cells[2].request.prompt.count(":-1>") == 2
    assert [c.label for c in plan.cells] == ["LoRA weight: 0", "LoRA weight: 0.5", "LoRA weight: -1"]


@pytest.mark.parametrize("axes, base, message", [
    ((("prompt_sr", "castle, barn"),), {}, r"X axis: Prompt S/R: 'castle' is not in the prompt"),
    ((("steps", "2"), ("prompt_sr", "castle, barn")), {"negative_prompt": "blurry"}, r"Y axis: Prompt S/R: 'castle' is not in the prompt"),
    ((("lora_weight", "0.5, 1"),), {}, r"X axis: LoRA weight: the prompt has no <lora:name:weight> tag"),
    ((("lora_weight", "0.5, 11"),), {"prompt": "a <lora:s:1>"}, r"'11' is not valid: the LoRA weight must be between -10 and 10"),
    ((("prompt", "a, b"), ("prompt_sr", "a, c")), {}, r"The X axis replaces the prompt the Y axis \(Prompt S/R\) edits"),
    ((("prompt_sr", "a, b"), ("prompt_sr", "a, c")), {}, "both set the prompt's 'a'"),
    ((("lora_weight", "1"), ("lora_weight", "2")), {"prompt": "a <lora:s:1>"}, "both set lora_weight"),
])
def test_prompt_edits_that_cannot_apply_are_refused_before_anything_runs(shared_manager, axes, base, message):
    with pytest.raises(InvalidRequest, match=message):
        build_plan(experiment(*axes, base=base), shared_manager)


def test_hires_steps_and_hires_upscaler_axes(shared_manager):
    """A1111's Hires steps and Hires upscaler axes; an upscaler name this models folder lacks is refused at planning,
    and a hires axis with hires fix off (a grid of one picture) too."""
    plan = build_plan(experiment(("hires_steps", "2, 4"), ("hires_upscaler", "Latent, Lanczos"), base={"hires_scale": 1.5}), shared_manager)
    assert [(c.request.hires_steps, c.request.hires_upscaler) for c in plan.cells] == [(2, "Latent"), (4, "Latent"), (2, "Lanczos"),
                                                                                       (4, "Lanczos")]
    assert plan.cells[3].label == "Hires steps: 4, Hires upscaler: Lanczos"
    with pytest.raises(InvalidRequest, match=r"X axis \(Hires upscaler\): 'RealESRGAN_x4plus' is not valid: No hires upscaler named"):
        build_plan(experiment(("hires_upscaler", "Latent, RealESRGAN_x4plus"), base={"hires_scale": 1.5}), shared_manager)
    with pytest.raises(InvalidRequest, match=r"The X axis \(Hires steps\) changes nothing with hires fix off"):
        build_plan(experiment(("hires_steps", "2, 4")), shared_manager)
    plan = build_plan(experiment(("hires_scale", "1, 1.5"), ("hires_steps", "2, 4")), shared_manager)  # on in some cells: fine
    assert len(plan.cells) == 4


def test_prompt_order_moves_the_fragments_through_their_places(shared_manager):
    """A1111's Prompt order: the places the fragments hold (earliest first) take them in each cell's order; the text
    between them stays."""
    base = {"prompt": "a red lighthouse, at dusk, calm sea", "negative_prompt": "red"}
    plan = build_plan(experiment(("prompt_order", "calm sea, red, at dusk"), base=base), shared_manager)
    prompts = [c.request.prompt for c in plan.cells]
    assert prompts[0] == "a calm sea lighthouse, red, at dusk"  # the typed order, in the prompt's places
    assert "a red lighthouse, at dusk, calm sea" in prompts and len(set(prompts)) == 6
    assert {c.request.negative_prompt for c in plan.cells} == {"red"}  # only the prompt is reordered (as A1111)
    assert plan.cells[0].label == "Prompt order: calm sea, red, at dusk"


@pytest.mark.parametrize("axes, message", [
    ((("prompt_order", "lighthouse, castle"),), r"X axis: Prompt order: 'castle' is not in the prompt"),
    ((("prompt_order", "red light, lighthouse"),), r"X axis: Prompt order: 'red light' and 'lighthouse' overlap in the prompt"),
    ((("prompt", "a, b"), ("prompt_order", "red, lighthouse")), r"The X axis replaces the prompt the Y axis \(Prompt order\) edits"),
    ((("prompt_sr", "red, blue"), ("prompt_order", "red, lighthouse")),
     r"The cell Prompt S/R: blue, Prompt order: red, lighthouse is not valid: Prompt order: 'red' is not in the prompt"),
])
def test_prompt_orders_that_cannot_apply_are_refused_before_anything_runs(shared_manager, axes, message):
    with pytest.raises(InvalidRequest, match=message):
        build_plan(experiment(*axes, base={"prompt": "a red lighthouse"}), shared_manager)


def test_styles_axis_adds_each_style_to_the_chosen_ones(make_manager, tmp_path):
    styles = tmp_path / "styles.csv"
    styles.write_text('name,prompt,negative_prompt\nPhoto,"{prompt}, 35mm photo",cartoon\nMoody,dark,\nWarm,golden hour,\n',
                      encoding="utf-8")
    manager = make_manager(styles_file=styles)
    plan = build_plan(experiment(("styles", "None, Photo"), ("styles", "Moody, Warm"), base={"styles": ["Warm"]}), manager)
    assert [c.request.styles for c in plan.cells] == [("Warm", "Moody"), ("Warm", "Photo", "Moody"), ("Warm", "Warm"),
                                                      ("Warm", "Photo", "Warm")]
    assert plan.cells[1].label == "Styles: Photo, Styles: Moody"
    with pytest.raises(InvalidRequest, match=r"X axis \(Styles\): 'Sketch' is not valid: there is no style named 'Sketch' in .*styles.csv; "
                                             r"styles: 'Photo', 'Moody', 'Warm' \('None': the cell adds no style\)"):
        build_plan(experiment(("styles", "Photo, Sketch")), manager)
    styles.write_bytes(b"\xff\xfe\x00garbage\x00")
    with pytest.raises(InvalidRequest, match=r"X axis \(Styles\): 'Photo' is not valid: The styles file .* cannot be read"):
        build_plan(experiment(("styles", "Photo")), manager)


def test_hires_checkpoint_axis(shared_manager):
    """A1111's Hires checkpoint as an axis: "Use same checkpoint" and a model of the starting model's family; another
    family's model or one not installed is refused at planning, as the generation would refuse it."""
    plan = build_plan(experiment(("hires_checkpoint", f"Use same checkpoint, {DEMO_MODEL_NAME}"), base={"hires_scale": 1.5, "model": "tiny-sd15"}),
                      shared_manager)
    assert [c.request.hires_checkpoint for c in plan.cells] == ["Use same checkpoint", DEMO_MODEL_NAME]
    assert plan.cells[1].label == f"Hires checkpoint: {DEMO_MODEL_NAME}"
    with pytest.raises(InvalidRequest, match=r"X axis \(Hires checkpoint\): 'tiny-sdxl' is not valid: The hires checkpoint 'tiny-sdxl' is "
                                             r"Stable Diffusion XL"):
        build_plan(experiment(("hires_checkpoint", "tiny-sdxl"), base={"hires_scale": 1.5, "model": "tiny-sd15"}), shared_manager)
    with pytest.raises(InvalidRequest, match=r"'nope' is not valid: The hires checkpoint 'nope' is not installed"):
        build_plan(experiment(("hires_checkpoint", "nope"), base={"hires_scale": 1.5}), shared_manager)
    with pytest.raises(InvalidRequest, match=r"The X axis \(Hires checkpoint\) changes nothing with hires fix off"):
        build_plan(experiment(("hires_checkpoint", DEMO_MODEL_NAME), base={"model": "tiny-sd15"}), shared_manager)


def test_refiner_axes(shared_manager):
    """A1111's Refiner checkpoint and Refiner switch at axes: a model of the starting model's family (or None), checked
    at planning as the generation would; a switch axis without any refiner is refused (identical pictures)."""
    plan = build_plan(experiment(("refiner_checkpoint", f"None, {DEMO_MODEL_NAME}"), ("refiner_switch_at", "0.5, 0.75"),
                                 base={"model": "tiny-sd15", "steps": 4}), shared_manager)
    assert [(c.request.refiner_checkpoint, c.request.refiner_switch_at) for c in plan.cells] == [
        ("None", 0.5), (DEMO_MODEL_NAME, 0.5), ("None", 0.75), (DEMO_MODEL_NAME, 0.75)]
    assert plan.cells[3].label == f"Refiner checkpoint: {DEMO_MODEL_NAME}, Refiner switch at: 0.75"
    with pytest.raises(InvalidRequest, match=r"'tiny-sdxl' is not valid: The refiner 'tiny-sdxl' is Stable Diffusion XL"):
        build_plan(experiment(("refiner_checkpoint", "tiny-sdxl"), base={"model": "tiny-sd15"}), shared_manager)
    with pytest.raises(InvalidRequest, match=r"'nope' is not valid: The refiner 'nope' is not installed"):
        build_plan(experiment(("refiner_checkpoint", "nope"), base={"model": "tiny-sd15"}), shared_manager)
    with pytest.raises(InvalidRequest, match=r"The X axis \(Refiner switch at\) changes nothing without a refiner"):
        build_plan(experiment(("refiner_switch_at", "0.5, 0.8"), base={"model": "tiny-sd15"}), shared_manager)
    with pytest.raises(InvalidRequest, match=r"'1.5' is not valid: Refiner switch at must be between 0.01 and 1"):
        build_plan(experiment(("refiner_switch_at", "0.5, 1.5"), base={"model": "tiny-sd15", "refiner_checkpoint": DEMO_MODEL_NAME}),
                   shared_manager)


def test_axis_choices_fill_an_axis_with_every_value_it_can_take(make_manager, tmp_path, model_zoo):
    from pipelines.experiments.plan import axis_choices, values_text
    from pipelines.samplers import sampler_names
    from tests.tiny_models import copy_model

    models = tmp_path / "models"
    copy_model(model_zoo["sd15"], models, "tiny-sd15")
    copy_model(model_zoo["flux"], models, "tiny-flux")
    (models / "styles.csv").write_text('name,prompt,negative_prompt\nPhoto,"{prompt}, photo",\nDusk,at dusk,\n', encoding="utf-8")
    manager = make_manager(models)
    flux = manager.entry("tiny-flux").family
    assert axis_choices("sampler", manager, "tiny-flux") == sampler_names(flux)  # the starting model's family
    assert axis_choices("hires_sampler", manager, "tiny-sd15")[0] == "Use same sampler"
    same_family = axis_choices("hires_checkpoint", manager, "tiny-sd15")
    assert same_family[0] == "Use same checkpoint" and sorted(same_family[1:]) == sorted(["tiny-sd15", DEMO_MODEL_NAME])
    assert "tiny-flux" not in axis_choices("hires_checkpoint", manager, "tiny-sd15")
    assert set(axis_choices("model", manager)) == {"tiny-sd15", "tiny-flux", DEMO_MODEL_NAME}
    assert axis_choices("styles", manager) == ["None", "Photo", "Dusk"]
    assert axis_choices("tiling", manager) == ["on", "off"] and axis_choices("steps", manager) == []
    assert {"Latent", "Lanczos"} <= set(axis_choices("hires_upscaler", manager))
    assert values_text(["Euler a", 'a, "b"', "c"]) == 'Euler a, "a, ""b""", c'
    from pipelines.experiments.axes import SETTINGS, parse_values, split_list
    assert split_list(values_text(["Euler a", 'a, "b"', "c"])) == ["Euler a", 'a, "b"', "c"]  # the axis reads them back
    assert parse_values(SETTINGS["sampler"], values_text(axis_choices("sampler", manager, "tiny-sd15")))

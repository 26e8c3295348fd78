"""`python app.py bench --suite lora`: what LoRAs cost, on the tiny SD 1.5 / SDXL / FLUX.1 pipelines.

- LoRA load (the "LoRA load" stage: PEFT layers injected, weights set) cold (file read from disk)
  vs memoized (state dict from the RAM memo): the memo must make a repeat cheaper;
- denoise step time with 0, 1 and 3 LoRAs applied (unfused PEFT layers: each adds two thin matmuls
  per targeted Linear);
- fused vs unfused: step time with the LoRA fused into the base weights, the time to fuse and unfuse,
  and how far the base weights are from the originals after unfusing (fusing writes the base weights,
  so it can never give the bit-identical restore the unfused path gives);
- prompt encode: a 150-token prompt (two 75-token chunks) vs a 75-token
  one, on the SD 1.5 and SDXL text encoders (`prompt_encode_timings`).

The LoRAs are random rank-16 adapters on every attention projection (and the CLIP text encoders),
written here in the diffusers/PEFT layout. Runs alternate (0, 1, 3, 0, 1, 3, ...) with the same seed;
figures are medians.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

from pipelines.bench.system import print_suite_header
from pipelines.bench.tables import heading, median, ratio, seconds, table
from pipelines.bench.tiny_models import BUILDERS, SAMPLERS, SIZES, save_tiny_pipeline
from pipelines.prompts.encode import prompt_encode_timings
from pipelines.request import GenerationRequest

RANK = 16
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "q_proj", "k_proj", "v_proj", "out_proj")


def random_lora(pipe, family: str, seed: int) -> dict:
    """A rank-16 LoRA in the diffusers/PEFT layout on every attention projection of `pipe`."""
    generator = torch.Generator().manual_seed(seed)
    parts = {"transformer" if family == "flux" else "unet": pipe.transformer if family == "flux" else pipe.unet,
             "text_encoder": pipe.text_encoder}
    if family == "sdxl":
        parts["text_encoder_2"] = pipe.text_encoder_2
    state = {}
    for prefix, module in parts.items():
        for name, layer in module.named_modules():
            if isinstance(layer, torch.nn.Linear) and name.endswith(TARGETS) and ".lora_" not in name:
                state[f"{prefix}.{name}.lora_A.weight"] = torch.randn(RANK, layer.in_features, generator=generator) * 0.05
                state[f"{prefix}.{name}.lora_B.weight"] = torch.randn(layer.out_features, RANK, generator=generator) * 0.05
    return state


def _request(family: str, prompt: str, steps: int) -> GenerationRequest:
    size = SIZES[family]
    return GenerationRequest(model=f"bench-{family}", prompt=prompt, steps=steps, width=size, height=size, seed=5,
                             cfg_scale=3.0, sampler=SAMPLERS[family], save=False)


def measure_family(manager, family: str, rounds: int, steps: int, say) -> dict:
    tags = {0: "", 1: " <lora:bench-{f}-0:0.8>", 3: " <lora:bench-{f}-0:0.8> <lora:bench-{f}-1:0.5> <lora:bench-{f}-2:-0.4>"}
    requests = {n: _request(family, "a portrait photo" + tag.format(f=family), steps) for n, tag in tags.items()}
    manager.generate(requests[0])  # warm-up: load, first-call costs
    cold, memo, step = [], [], {n: [] for n in requests}
    for _ in range(rounds):
        manager.lora_memo.clear()
        cold.append(manager.generate(requests[1]).stage_seconds["LoRA load"])
        memo.append(manager.generate(requests[1]).stage_seconds["LoRA load"])
        for count, request in requests.items():
            step[count].append(median(manager.generate(request).step_seconds))
    say(f"{family}: load cold {median(cold):.4f} s, memoized {median(memo):.4f} s")
    return {"load_cold_s": median(cold), "load_memo_s": median(memo), "step_s": {n: median(v) for n, v in step.items()},
            "fused": measure_fused(manager, family, requests[0], rounds)}


def measure_fused(manager, family: str, request: GenerationRequest, rounds: int) -> dict:
    """Fuse one LoRA into the base weights by hand (diffusers' fuse_lora), time steps, unfuse, compare weights."""
    from pipelines.hooks.lora import AppliedLora, LoraHook
    from pipelines.lora.files import lora_hash

    entry = manager.lora_entry(f"bench-{family}-0")
    hook = LoraHook([AppliedLora(entry.name, entry.path, 0.8, lora_hash(entry.path))], manager.lora_memo)
    with manager.use(request.model) as model:
        pipe = model.pipe
        denoiser = pipe.transformer if family == "flux" else pipe.unet
        before = {k: v.detach().clone() for k, v in denoiser.state_dict().items()}
        hook.attach(pipe)
        try:
            unfused_steps = [_pipe_step_seconds(pipe, family, request) for _ in range(rounds)]
            start = time.perf_counter()
            pipe.fuse_lora(lora_scale=1.0)
            fuse_s = time.perf_counter() - start
            fused_steps = [_pipe_step_seconds(pipe, family, request) for _ in range(rounds)]
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Already unmerged")
                pipe.unfuse_lora()
            unfuse_s = time.perf_counter() - start
        finally:
            hook.detach(pipe)
        after = denoiser.state_dict()
        drift = max((before[k].float() - after[k].float()).abs().max().item() for k in before)
        exact = all(torch.equal(before[k], after[k]) for k in before)
    return {"fuse_s": fuse_s, "unfuse_s": unfuse_s, "step_s_unfused": median(unfused_steps), "step_s_fused": median(fused_steps),
            "max_weight_drift_after_unfuse": drift, "bit_identical_after_unfuse": exact}


def _pipe_step_seconds(pipe, family: str, request: GenerationRequest) -> float:
    """Seconds per step of one plain pipeline call (prompt encode included, the same in both arms)."""
    start = time.perf_counter()
    with torch.no_grad():
        pipe(prompt="a portrait photo", num_inference_steps=request.steps, height=request.height, width=request.width,
             output_type="latent", generator=torch.Generator("cpu").manual_seed(5),
             **({} if family == "flux" else {"guidance_scale": request.cfg_scale}))
    return (time.perf_counter() - start) / request.steps


def report(results: dict, device: torch.device) -> str:
    lines = [heading(f"LoRA cost on {device} (tiny pipelines, rank {RANK}, medians)")]
    rows = []
    for family, r in results.items():
        base = r["step_s"][0]
        rows.append([family, seconds(r["load_cold_s"], 4), seconds(r["load_memo_s"], 4), ratio(r["load_cold_s"] / max(r["load_memo_s"], 1e-9)),
                     seconds(base, 4), seconds(r["step_s"][1], 4), ratio(r["step_s"][1] / base), seconds(r["step_s"][3], 4), ratio(r["step_s"][3] / base)])
    lines.append(table(["family", "load cold", "load memo", "cold/memo", "step 0", "step 1 LoRA", "x", "step 3 LoRAs", "x"], rows))
    rows = [[family, seconds(r["fused"]["step_s_unfused"], 4), seconds(r["fused"]["step_s_fused"], 4),
             ratio(r["fused"]["step_s_fused"] / max(r["fused"]["step_s_unfused"], 1e-9)), seconds(r["fused"]["fuse_s"], 4), seconds(r["fused"]["unfuse_s"], 4),
             f"{r['fused']['max_weight_drift_after_unfuse']:.2e}", "yes" if r["fused"]["bit_identical_after_unfuse"] else "no"]
            for family, r in results.items()]
    lines.append("")
    lines.append(table(["family", "step unfused", "step fused", "x", "fuse", "unfuse", "weight drift after unfuse", "bit-identical"], rows))
    lines.append("Unfused is the default: it restores the base weights exactly; fusing saves the LoRA matmuls per step "
                 "but costs a fuse + unfuse per generation and leaves rounding drift in the base weights.")
    rows = [[family, f"{e['tokens_short']} / {e['tokens_long']} ({e['chunks_long']} chunks)", seconds(e["seconds_short"], 4),
             seconds(e["seconds_long"], 4), ratio(e["ratio"])]
            for family, r in results.items() if (e := r.get("prompt_encode"))]
    if rows:
        lines.append("")
        lines.append("prompt encode: 150 tokens vs 75 tokens")
        lines.append(table(["family", "tokens", "encode 75", "encode 150", "x"], rows))
    return "\n".join(lines)


def run(manager, json_file: Path | None = None, quick: bool = False, out=None) -> int:
    out = out or sys.stdout

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    print_suite_header(out, "bench --suite lora: LoRA load cold vs memoized, step time with 0/1/3 LoRAs, fused vs unfused", manager.device)
    from pipelines.manager import ManagerConfig, PipelineManager

    rounds, steps = (2, 2) if quick else (5, 4)
    folder = Path(tempfile.mkdtemp(prefix="likeness-bench-lora-"))
    encode: dict[str, dict] = {}
    try:
        for family, build in BUILDERS.items():
            pipe = build()
            save_tiny_pipeline(pipe, folder / f"bench-{family}")
            if family in ("sd15", "sdxl"):  # the CLIP encoders; FLUX.1's T5 prompt is not chunked
                encode[family] = prompt_encode_timings(pipe.to(manager.device), manager.device, sdxl=family == "sdxl",
                                                       repeats=2 if quick else 5)
                say(f"{family}: prompt encode 75 tokens {encode[family]['seconds_short']:.4f} s, "
                    f"150 tokens {encode[family]['seconds_long']:.4f} s")
                pipe.to("cpu")
            for index in range(3):
                (folder / "Lora").mkdir(exist_ok=True)
                save_file(random_lora(pipe, family, seed=index), str(folder / "Lora" / f"bench-{family}-{index}.safetensors"))
        bench = PipelineManager(ManagerConfig(models_dir=folder, outputs_dir=folder / "out", cache_dir=manager.config.cache_dir,
                                              device=str(manager.device), include_hf_cache=False, latent_cache_entries=0,
                                              prompt_memo_entries=1))
        results = {family: measure_family(bench, family, rounds, steps, say) for family in BUILDERS}
        for family, row in encode.items():
            results[family]["prompt_encode"] = row
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    say(report(results, manager.device))
    if json_file is not None:
        Path(json_file).write_text(json.dumps(results, indent=2))
    return 0


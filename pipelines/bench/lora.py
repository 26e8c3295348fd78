"""`python app.py bench --suite lora`: what LoRAs cost, on the tiny SD 1.5 / SDXL / FLUX.1 pipelines.

- LoRA load (the "LoRA load" stage: PEFT layers injected, weights set) cold (file read from disk)
  vs memoized (state dict from the RAM memo): the memo must make a repeat cheaper;
- denoise step time with 0, 1 and 3 LoRAs applied (unfused PEFT layers: each adds two thin matmuls
  per targeted Linear);
- the same with the LoRAs fused into the base weights (the fuse policy forced to "always");
- switching between two LoRA sets vs the same set again, with the app's "auto" fuse policy;
- fuse + restore (Likeness: copies of the touched weights written back, exact) vs PEFT's fuse + unfuse
  (the delta subtracted again: rounding drift), and the drift each leaves;
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
from pipelines.lora.fuse import FusePolicy
from pipelines.bench.tiny_models import BUILDERS, SAMPLERS, SIZES, save_tiny_pipeline
from pipelines.prompts.encode import prompt_encode_timings
from pipelines.request import GenerationRequest

RANK = 16
FUSED_TARGET = 1.02  # one fused LoRA's step / the base step, on a real-size model (issue 15)
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
    manager.lora_fuse = FusePolicy("off")
    manager.generate(requests[0])  # warm-up: load, first-call costs
    cold, memo = [], []
    step = {mode: {n: [] for n in requests} for mode in ("off", "always")}
    for _ in range(rounds):
        manager.lora_fuse = FusePolicy("off")
        manager.lora_memo.clear()
        cold.append(manager.generate(requests[1]).stage_seconds["LoRA load"])
        memo.append(manager.generate(requests[1]).stage_seconds["LoRA load"])
        for mode in step:  # unfused and fused side by side, round after round
            manager.lora_fuse = FusePolicy(mode)
            for count, request in requests.items():
                step[mode][count].append(median(manager.generate(request).step_seconds))
    say(f"{family}: load cold {median(cold):.4f} s, memoized {median(memo):.4f} s")
    return {"load_cold_s": median(cold), "load_memo_s": median(memo),
            "step_s": {n: median(v) for n, v in step["off"].items()},
            "step_s_fused": {n: median(v) for n, v in step["always"].items()},
            "switching": measure_switching(manager, family, steps, rounds),
            "fused": measure_restore(manager, family, requests[0])}


def measure_switching(manager, family: str, steps: int, rounds: int) -> dict:
    """Two LoRA sets in turn (A B A B ...) vs the same set again (A A A A ...), with the app's fuse policy:
    each generation attaches and removes its set, so what a switch can cost is the repeat's advantage
    (a state dict read again, a fuse the policy would do on a repeat)."""
    a = _request(family, f"a portrait photo <lora:bench-{family}-0:0.8>", steps)
    b = _request(family, f"a portrait photo <lora:bench-{family}-1:0.8>", steps)
    manager.lora_fuse = FusePolicy("auto")
    timings = {}
    for label, order in (("same", [a, a]), ("switching", [a, b])):
        manager.lora_fuse.forget()
        totals, loads = [], []
        for index in range(2 * rounds + 2):
            result = manager.generate(order[index % 2])
            if index >= 2:  # the first pair teaches the policy; measure from then on
                totals.append(result.total_seconds)
                loads.append(result.stage_seconds["LoRA load"])
        timings[label] = {"total_s": median(totals), "load_s": median(loads)}
    return timings


def measure_restore(manager, family: str, request: GenerationRequest) -> dict:
    """Fuse one LoRA and take it out again two ways: Likeness's restore of the copied weights, and PEFT's
    `unfuse_lora` (subtracting the delta again); how far each leaves the base weights from the originals."""
    from pipelines.hooks.lora import AppliedLora, LoraHook
    from pipelines.lora.files import lora_hash

    entry = manager.lora_entry(f"bench-{family}-0")
    applied = [AppliedLora(entry.name, entry.path, 0.8, lora_hash(entry.path))]
    with manager.use(request.model) as model:
        pipe = model.pipe
        denoiser = pipe.transformer if family == "flux" else pipe.unet
        before = {k: v.detach().clone() for k, v in denoiser.state_dict().items()}
        hook = LoraHook(applied, manager.lora_memo, fuse=True)
        hook.attach(pipe)
        hook.detach(pipe)
        ours = _drift(before, denoiser.state_dict())
        plain = LoraHook(applied, manager.lora_memo)
        plain.attach(pipe)
        try:
            start = time.perf_counter()
            pipe.fuse_lora(lora_scale=1.0)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Already unmerged")
                pipe.unfuse_lora()
            peft_s = time.perf_counter() - start
        finally:
            plain.detach(pipe)
        peft = _drift(before, denoiser.state_dict())
        with torch.no_grad():  # put the originals back for the runs that follow
            for name, param in denoiser.state_dict().items():
                param.copy_(before[name])
    return {"fuse_restore_s": hook.fuse_seconds, "peft_fuse_unfuse_s": peft_s,
            "drift_restore": ours[0], "bit_identical_restore": ours[1], "drift_peft_unfuse": peft[0], "bit_identical_peft_unfuse": peft[1]}


REAL_SIZE = 256  # px: the full SD 1.5 architecture at a size two CPU cores step through in about a second


class UnetCpuClock:
    """Thread CPU time spent inside the UNet's forward, call by call. On a CPU shared with other work,
    wall clock also counts the time this process waits for a core; `time.thread_time()` counts only
    the cycles it ran. With one torch thread the whole forward runs on the calling thread, so this is
    the compute of a step. Plain module hooks, removed again by `close()`."""

    def __init__(self, unet: torch.nn.Module):
        self.calls: list[float] = []
        self._started = 0.0
        self._handles = [unet.register_forward_pre_hook(self._start), unet.register_forward_hook(self._stop)]

    def _start(self, module, args) -> None:
        self._started = time.thread_time()

    def _stop(self, module, args, output) -> None:
        self.calls.append(time.thread_time() - self._started)

    def take(self) -> list[float]:
        calls, self.calls = self.calls, []
        return calls

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def measure_real_size(manager, folder: Path, rounds: int, say) -> dict:
    """The issue's target on a real-size model: the full SD 1.5 architecture (860 M-parameter UNet, seeded
    random weights: the same compute as real ones) with one rank-16 LoRA on every attention projection;
    step time of the base model, the LoRA unfused and the LoRA fused, interleaved round by round.
    On a CPU it runs on one torch thread and also counts each UNet call's thread CPU time
    (`UnetCpuClock`), the figure a shared machine cannot distort."""
    from pipelines.bench.models import full_pipeline, parameter_counts
    from pipelines.families import Family

    pipe = full_pipeline("sd15", manager.device, torch.float32, seed=3)
    manager.adopt("bench-sd15-full", Family.SD15, pipe, torch.float32)
    save_file(random_lora(pipe, "sd15", seed=7), str(folder / "Lora" / "bench-sd15-full-lora.safetensors"))
    manager.refresh_loras()
    base = GenerationRequest(model="bench-sd15-full", prompt="a portrait photo", steps=4, width=REAL_SIZE, height=REAL_SIZE, seed=5,
                             cfg_scale=5.0, sampler="Euler", save=False)
    with_lora = GenerationRequest(**{**base.__dict__, "prompt": base.prompt + " <lora:bench-sd15-full-lora:0.8>"})
    arms = (("base", "off", base), ("unfused", "off", with_lora), ("fused", "always", with_lora))
    on_cpu = manager.device.type == "cpu"
    threads = torch.get_num_threads()
    clock = UnetCpuClock(pipe.unet) if on_cpu else None
    step = {arm: [] for arm, _, _ in arms}
    unet_cpu = {arm: [] for arm, _, _ in arms}
    try:
        if on_cpu:
            torch.set_num_threads(1)
        for round_index in range(rounds + 1):  # round 0 warms every arm up
            for arm, mode, request in arms:
                manager.lora_fuse = FusePolicy(mode)
                seconds = median(manager.generate(request).step_seconds)
                cpu_calls = clock.take() if clock else []
                if round_index:
                    step[arm].append(seconds)
                    unet_cpu[arm].extend(cpu_calls)
            if round_index:
                cpu_note = (f"; UNet call CPU time base {median(unet_cpu['base']):.3f} s, unfused {median(unet_cpu['unfused']):.3f} s, "
                            f"fused {median(unet_cpu['fused']):.3f} s" if on_cpu else "")
                say(f"real-size SD 1.5 round {round_index}/{rounds}: step base {step['base'][-1]:.3f} s, "
                    f"unfused {step['unfused'][-1]:.3f} s, fused {step['fused'][-1]:.3f} s{cpu_note}")
    finally:
        torch.set_num_threads(threads)
        if clock:
            clock.close()
        manager.unload("bench-sd15-full")
    unet_params = parameter_counts(pipe)["unet"]
    result = {"unet_params": unet_params, "size": REAL_SIZE, "threads": 1 if on_cpu else threads,
              "step_s": {arm: median(v) for arm, v in step.items()}}
    if on_cpu:
        result["unet_cpu_s"] = {arm: median(v) for arm, v in unet_cpu.items()}
    return result


def _drift(before: dict, after: dict) -> tuple[float, bool]:
    drift = max((before[k].float() - after[k].float()).abs().max().item() for k in before)
    return drift, all(torch.equal(before[k], after[k]) for k in before)


def report(results: dict, device: torch.device, real: dict | None = None) -> str:
    lines = [heading(f"LoRA cost on {device} (tiny pipelines, rank {RANK}, medians)")]
    rows = []
    for family, r in results.items():
        base = r["step_s"][0]
        rows.append([family, seconds(r["load_cold_s"], 4), seconds(r["load_memo_s"], 4), ratio(r["load_cold_s"] / max(r["load_memo_s"], 1e-9)),
                     seconds(base, 4)] + [f"{seconds(r[key][n], 4)} ({ratio(r[key][n] / base)})" for n in (1, 3) for key in ("step_s", "step_s_fused")])
    lines.append(table(["family", "load cold", "load memo", "cold/memo", "step 0", "1 LoRA unfused", "1 LoRA fused",
                        "3 LoRAs unfused", "3 LoRAs fused"], rows))
    rows = [[family, seconds(r["switching"]["same"]["total_s"], 4), seconds(r["switching"]["switching"]["total_s"], 4),
             ratio(r["switching"]["switching"]["total_s"] / max(r["switching"]["same"]["total_s"], 1e-9)),
             seconds(r["switching"]["same"]["load_s"], 4), seconds(r["switching"]["switching"]["load_s"], 4)]
            for family, r in results.items()]
    lines.append("")
    lines.append("switching between two LoRA sets vs the same set again (per generation, fuse policy auto)")
    lines.append(table(["family", "same set", "switching", "x", "LoRA load same", "LoRA load switching"], rows))
    rows = [[family, seconds(r["fused"]["fuse_restore_s"], 4), f"{r['fused']['drift_restore']:.2e}",
             "yes" if r["fused"]["bit_identical_restore"] else "no", seconds(r["fused"]["peft_fuse_unfuse_s"], 4),
             f"{r['fused']['drift_peft_unfuse']:.2e}", "yes" if r["fused"]["bit_identical_peft_unfuse"] else "no"]
            for family, r in results.items()]
    lines.append("")
    lines.append("fuse and take out again: Likeness restores copied weights; PEFT's unfuse subtracts the delta")
    lines.append(table(["family", "fuse + restore", "weight drift", "bit-identical", "PEFT fuse + unfuse", "weight drift", "bit-identical"], rows))
    lines.append("The app fuses a LoRA set from its first repeat on when the measured steps saved outweigh fuse + restore "
                 "(Settings: LoRA fusing auto/off/always).")
    if real:
        lines.append("")
        lines.extend(real_size_report(real))
    rows = [[family, f"{e['tokens_short']} / {e['tokens_long']} ({e['chunks_long']} chunks)", seconds(e["seconds_short"], 4),
             seconds(e["seconds_long"], 4), ratio(e["ratio"])]
            for family, r in results.items() if (e := r.get("prompt_encode"))]
    if rows:
        lines.append("")
        lines.append("prompt encode: 150 tokens vs 75 tokens")
        lines.append(table(["family", "tokens", "encode 75", "encode 150", "x"], rows))
    return "\n".join(lines)


def real_size_report(real: dict) -> list[str]:
    """The real-size rows. On a CPU the target is judged on the UNet's thread CPU time (the compute);
    the wall-clock row stays beside it, so a gap between the two shows a shared machine."""
    step, cpu = real["step_s"], real.get("unet_cpu_s")
    lines = [f"real-size SD 1.5 ({real['unet_params'] / 1e6:.0f} M-parameter UNet, random weights) at {real['size']} px, "
             f"{real['threads']} torch thread(s), one rank-{RANK} LoRA on every attention projection; target: fused <= {FUSED_TARGET}x base"]
    rows = [["step, wall clock"] + _arm_cells(step, judged=cpu is None)]
    if cpu:
        rows.append(["UNet call, thread CPU time"] + _arm_cells(cpu, judged=True))
    lines.append(table(["measure", "base", "1 LoRA unfused", "x", "1 LoRA fused", "x", "target"], rows))
    return lines


def _arm_cells(times: dict, judged: bool) -> list[str]:
    fused_ratio = times["fused"] / times["base"]
    verdict = ("met" if fused_ratio <= FUSED_TARGET else "missed") if judged else "(not judged: includes waits for a core)"
    return [seconds(times["base"], 4), seconds(times["unfused"], 4), ratio(times["unfused"] / times["base"]),
            seconds(times["fused"], 4), ratio(fused_ratio), verdict]


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
        # Minutes of random init and real-size steps: not in the smoke run.
        real = None if quick else measure_real_size(bench, folder, rounds=3, say=say)
        for family, row in encode.items():
            results[family]["prompt_encode"] = row
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    say(report(results, manager.device, real))
    if json_file is not None:
        Path(json_file).write_text(json.dumps(results | ({"real_size": real} if real else {}), indent=2))
    return 0


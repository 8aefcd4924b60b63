"""Evaluating one (row, seed): the project's own inference and scoring, the same prompts and sampler seeds for every
row. Stage-1 grids as `generate` makes them (stock FluxPipeline + the row's LoRA file that serves the prompt's
domain, models/lora_names.py; none for the base), adaptive steps with
that seed's stage-2 LoRA for the adaptive rows (`inference/session.run_adaptive`), sample folders as `generate`
writes them, then `eval/sample_table` scores them (an adaptive row on its final sequences: Align on the final frames
in the stage-1 layout, the judge on all of them; docs/EVALUATION.md, "Final sequences") and `eval/adaptive_truth`
measures the adaptive rows on ground truth. Writes OUT/eval/<row>/seed-<s>/{samples/, metrics.json} and the W&B
evaluation run.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path

from pm_lightning.ablation.columns import FROM_SAMPLE_TABLE, TRUTH_KEYS
from pm_lightning.ablation.jobs import calibration_file, eval_dir, fused_stage1, stage1_dir, stage2_dir
from pm_lightning.ablation.plan import Plan
from pm_lightning.ablation.prompts import Prompt, plan_prompts, sampler_seed, write_truth
from pm_lightning.core.atomic import atomic_path
from pm_lightning.core.run_layout import RunDir
from pm_lightning.inference.request import GenerationRequest
from pm_lightning.models.lora_names import PLAIN, SUFFIX, lora_file_for


def generation_request(
    plan: Plan, prompt: Prompt, seed: int, index: int, out: Path, steps: list[str] | None
) -> GenerationRequest:
    """`generate`'s request for one prompt (every value the plan leaves open: generate's default)."""
    ev = plan.eval
    return GenerationRequest(prompt=prompt.caption, out=out, base=ev.base, domain=prompt.domain,
                             seed=sampler_seed(seed, index), steps=steps or None, clip=ev.clip, dino=ev.dino,
                             num_inference_steps=ev.num_inference_steps, guidance=ev.guidance)  # fmt: skip


def judge_for(plan: Plan, cache: Path):
    """The GPT-4o judge when the plan asks for it (auto: an endpoint or key is configured), else None."""
    mode = plan.eval.judge
    configured = bool(os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"))
    if mode == "off" or (mode == "auto" and not configured):
        return None
    from pm_lightning.eval.judge import Judge

    return Judge.from_env(cache_dir=cache)


def adaptive_configs(plan: Plan, out: Path, scorer) -> dict[str, dict]:
    """Each adaptive row's settings, calibrated on split 2 as eval/adaptive_truth calibrates them (the same cases for
    every row), computed once for the whole ablation (OUT/calibration.json, under a file lock)."""
    import fcntl
    from dataclasses import asdict

    from pm_lightning.data.synthetic_corpus import DOMAINS
    from pm_lightning.eval.adaptive_truth import calibrate_row, case_terms, make_cases, truth_sequences

    path = calibration_file(out)
    needed = sorted({r.adaptive for r in plan.rows.values() if r.adaptive})
    with open(Path(out) / ".calibration.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = json.loads(path.read_text()) if path.is_file() else {}
        n = plan.eval.truth_calibration_cases
        if done.get("cases_per_condition") != n or any(r not in done.get("rows", {}) for r in needed):
            seqs = truth_sequences(2, -(-n // len(DOMAINS)))
            cases = make_cases(seqs, n, seed=1)
            terms = case_terms(scorer, seqs, cases)
            rows = {}
            for name in needed:
                cfg, rates = calibrate_row(terms, cases, name)
                rows[name] = {"config": asdict(cfg), "rates_on_calibration_data": rates}
            done = {"cases_per_condition": n, "split": 2, "encoders": {"clip": plan.eval.clip, "dino": plan.eval.dino},
                    "rows": rows}  # fmt: skip
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(done, indent=1) + "\n")
    return done["rows"]


def truth_figures(plan: Plan, scorer, name: str, config: dict, seed: int) -> dict[str, float]:
    """Ground-truth rates of one adaptive row on split-1 cases drawn with the ablation seed."""
    from pm_lightning.data.synthetic_corpus import DOMAINS
    from pm_lightning.eval.adaptive_truth import ROWS, case_terms, make_cases, outcomes, truth_sequences
    from pm_lightning.inference.adaptive_rule import AdaptiveConfig

    n = plan.eval.truth_cases
    seqs = truth_sequences(1, -(-n // len(DOMAINS)))
    cases = make_cases(seqs, n, seed=seed)
    rates = outcomes(case_terms(scorer, seqs, cases), cases, AdaptiveConfig.from_dict(config), ROWS[name][1])
    return {TRUTH_KEYS[k]: v for k, v in rates.items() if k in TRUTH_KEYS and not math.isnan(v)}


def table_metrics(results: dict, held_out: list[str]) -> dict[str, float]:
    """Per-domain scores (`align/lego`), their mean over the training domains (`align`) and the held-out ones
    (`unseen_align`), from `eval/sample_table.evaluate`'s result."""
    out: dict[str, float] = {}
    for src, key in FROM_SAMPLE_TABLE.items():
        seen, unseen = [], []
        for domain, vals in results["domains"].items():
            value = vals.get(src)
            if value is None:
                continue
            out[f"{key}/{domain}"] = value
            (unseen if domain in held_out else seen).append(value)
        if seen:
            out[key] = sum(seen) / len(seen)
        if unseen:
            out[f"unseen_{key}"] = sum(unseen) / len(unseen)
    return out


def evaluate_pair(plan: Plan, out: Path, row: str, seed: int) -> dict:
    """Generate, adapt, score and measure one (row, seed); returns the metrics record (also metrics.json)."""
    from pm_lightning.data.grid import grid_to_frames, layout_for
    from pm_lightning.eval.sample_table import evaluate
    from pm_lightning.inference.adaptive import EncoderScorer
    from pm_lightning.inference.adaptive_rule import AdaptiveConfig
    from pm_lightning.inference.outputs import write_sample
    from pm_lightning.inference.runtime import Runtime
    from pm_lightning.inference.session import (
        Models,
        captions_for,
        generation_report,
        grid_resolution,
        run_adaptive,
        sample_grid,
    )
    from pm_lightning.models.encoders import Encoders

    start, out, spec = time.perf_counter(), Path(out), plan.rows[row]
    folder, s1 = RunDir(eval_dir(out, row, seed)), plan.stage1_row(row)
    prompts = plan_prompts(plan.eval, out / "truth")
    write_truth(plan.eval, prompts)
    lora_dir = RunDir(stage1_dir(out, s1, seed)).lora_final if s1 else None
    with_texts = spec.adaptive != "without Delta_sem"  # that row is "without step texts" (eval/adaptive_truth.ROWS)
    jobs = [(i, p, generation_request(plan, p, seed, i, folder.samples / p.id, p.steps if with_texts else None))
            for i, p in enumerate(prompts)]  # fmt: skip
    models = Models(plan.eval.base, Runtime.resolve(plan.eval.device, plan.eval.dtype))
    enc = Encoders.load(clip=plan.eval.clip, dino=plan.eval.dino, device=models.runtime.device)
    scorer = EncoderScorer(enc)
    config = None
    if spec.adaptive:
        config = adaptive_configs(plan, out, scorer)[spec.adaptive]["config"]
    firsts = []
    for _, p, req in jobs:  # every stage-1 grid first: one backbone for all, LoRA files swapped per domain
        lora = lora_file_for(lora_dir, p.domain) if lora_dir else None
        resolution = grid_resolution(req.base, p.frames)
        grid = sample_grid(models.use(None, lora), p.caption, resolution, req.num_inference_steps, req.guidance,
                           req.seed)  # fmt: skip
        rows_, cols = layout_for(p.frames)
        used = {"stage1": str(lora) if lora else None}
        settings = dict(base=req.base, frames=p.frames, rows=rows_, cols=cols, resolution=resolution)
        firsts.append((grid, grid_to_frames(grid, rows_, cols), used, settings))
    for (_, p, req), (grid, frames, used, settings) in zip(jobs, firsts):
        notes, result, timings = [], None, {}
        if spec.adaptive:
            stage2 = RunDir(stage2_dir(out, s1, seed)).lora_final / f"{PLAIN}{SUFFIX['diffusers']}"
            req = replace(req, adaptive=True, stage2=stage2, stage2_fuse=fused_stage1(plan, out, s1, seed))
            t0 = time.perf_counter()
            cfg = AdaptiveConfig.from_dict(config)
            result = run_adaptive(models, frames, req, cfg, notes)
            timings["adaptive_s"] = round(time.perf_counter() - t0, 3)
        final = result.images if result is not None else frames
        report = generation_report(req, models, settings, used, notes, result, timings)
        report.update(ablation={"row": row, "seed": seed, "prompt_id": p.id})
        if p.truth is not None:
            report["ground_truth"] = str(p.truth.resolve())
        write_sample(req.out, grid, final, captions_for(result, req.steps, len(final)), report)
    results = evaluate(folder.samples, enc, judge_for(plan, out / "judge-cache"))
    metrics = table_metrics(results, plan.eval.held_out)
    if spec.adaptive:  # the samples' edit counts, as the sample table read them from each report (sample_table.edits)
        scored = results["samples"]
        metrics["inserted"] = sum(s["inserted"] for s in scored) / len(scored)
        metrics["deleted"] = sum(s["deleted"] for s in scored) / len(scored)
        metrics.update(truth_figures(plan, scorer, spec.adaptive, config, seed))
    record = {"row": row, "seed": seed, "metrics": metrics, "samples": results["samples"],
              "skipped": results["skipped"], "adaptive_config": config, "encoders": results["encoders"],
              "eval_s": round(time.perf_counter() - start, 2)}  # fmt: skip
    with atomic_path(folder.root / "metrics.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    return record

"""Evaluation during training: sample grids scored by CLIP score and (optionally) the GPT-4o judge.

Logged without `pl_module.log` (the grids are rendered outside any step's metric collection):
per-domain scalars `eval/<domain>/<metric>` and `eval/mean/<metric>` through `logger.log_metrics`,
and on W&B one table per domain `eval/<domain>/table`. With no logger the scores still land in
`<samples dir>/<tag>.json` next to `<tag>.png`.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from pm_lightning.core.atomic import atomic_path
from pm_lightning.training.callbacks.samples import SampleGrids

log = logging.getLogger(__name__)

METRICS = ("clip_score", "accuracy", "coherence", "usability")
TABLE_COLUMNS = ["domain", "prompt", "image", "clip_score", "accuracy", "coherence", "usability"]


class EvaluationCallback(SampleGrids):
    """Every `every_n_steps` optimizer steps (rank zero): render the fixed prompts, score them, log per domain."""

    def __init__(
        self,
        clip: str = "tiny",
        judge: bool = False,
        judge_model: str | None = None,
        judge_base_url: str | None = None,
        judge_timeout: float | None = None,
        judge_cache_dir: str | None = None,
        judge_workers: int = 4,
        **kwargs,
    ):
        """
        Args:
            clip: CLIP encoder for the CLIP score: "tiny" (the embedded evaluator), a local directory,
                or "MODEL/PRETRAINED" for open_clip (see `pm_lightning.models.encoders`).
            judge: also score each grid with the GPT-4o rubric (Accuracy, Coherence, Usability).
            judge_model: chat model; None = `OPENAI_MODEL`, else gpt-4o.
            judge_base_url: OpenAI-compatible endpoint; None = `OPENAI_BASE_URL`, else api.openai.com.
                The key is read from `OPENAI_API_KEY` only, so it never sits in a saved config.
            judge_timeout: seconds per judge request (None = 60).
            judge_cache_dir: judge answer cache (default `<samples dir>/judge-cache`).
            judge_workers: judge requests in flight at once.
            **kwargs: the sample-grid arguments (`SampleGrids`: prompts, every_n_steps, resolution,
                num_inference_steps, guidance, seed, dirpath, at_start).
        """
        super().__init__(**kwargs)
        if judge_workers < 1:
            raise ValueError(f"EvaluationCallback.judge_workers must be >= 1, got {judge_workers}")
        if judge_timeout is not None and judge_timeout <= 0:
            raise ValueError(f"EvaluationCallback.judge_timeout must be > 0, got {judge_timeout}")
        self.clip, self.judge = clip, judge
        self.judge_model, self.judge_base_url, self.judge_timeout = judge_model, judge_base_url, judge_timeout
        self.judge_cache_dir, self.judge_workers = judge_cache_dir, judge_workers
        self.last_scores: dict | None = None
        self._encoders = None
        self._judge = None

    def encoders(self, device: str = "cpu"):
        """The CLIP encoder, loaded on first use."""
        if self._encoders is None:
            from pm_lightning.models.encoders import Encoders

            # dino="tiny" reuses the CLIP visual tower: nothing else is loaded (the callback needs no patch tokens).
            self._encoders = Encoders.load(clip=self.clip, dino="tiny", device=device)
        return self._encoders

    def judge_client(self, trainer):
        """The judge, built on first use from the arguments and the environment (None when `judge` is off)."""
        if self.judge and self._judge is None:
            from pm_lightning.eval.judge import Judge

            cache = self.judge_cache_dir or self.out_dir(trainer) / "judge-cache"
            self._judge = Judge.from_env(self.judge_model, self.judge_base_url, self.judge_timeout, cache)
        return self._judge

    def on_samples(self, trainer, pl_module, images: list[Image.Image], tag: str) -> None:
        rows = self.score(trainer, pl_module, images)
        metrics = domain_metrics(rows)
        report = {"tag": tag, "step": trainer.global_step, "clip": self.clip, "rows": rows, "metrics": metrics}
        if self._judge is not None:
            report["judge_model"] = self._judge.model
        path = self.out_dir(trainer) / f"{tag}.json"
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(report, indent=1))
        self.last_scores = report
        for logger in trainer.loggers:
            self._log(logger, rows, images, metrics, trainer.global_step)

    def score(self, trainer, pl_module, images: list[Image.Image]) -> list[dict]:
        """One row per prompt: domain, prompt, clip_score and the judge's scores (None when off or failed)."""
        from pm_lightning.eval.scores import clip_score

        captions = [p["caption"] for p in self.prompts]
        enc = self.encoders(str(getattr(pl_module, "device", "cpu")))
        clip = clip_score(enc.image_embeddings(images), enc.text_embeddings(captions))  # (N,)
        judged = self._judge_all(trainer, images, captions)
        rows = []
        for p, c, j in zip(self.prompts, clip.tolist(), judged):
            rows.append({"domain": p["domain"], "prompt": p["caption"], "clip_score": float(c), **j})
        return rows

    def _judge_all(self, trainer, images: list[Image.Image], captions: list[str]) -> list[dict]:
        from pm_lightning.eval.judge import JudgeResult

        if not self.judge:  # same row schema either way: the judge's columns stay None
            return [{**JudgeResult(None, None, None).scores(), "judge_error": None} for _ in images]
        try:
            judge = self.judge_client(trainer)
            with ThreadPoolExecutor(self.judge_workers) as pool:  # requests wait on the network, not the CPU
                results = list(pool.map(judge.score, images, captions))
        except Exception as err:  # noqa: BLE001 - Judge.score never raises; this guards the rest
            results = [JudgeResult.failed(f"judge crashed: {type(err).__name__}: {err}")] * len(images)
        failed = [r.error for r in results if r.error]
        if failed:
            log.warning("judge: %d/%d grids unscored, first reason: %s", len(failed), len(results), failed[0])
        return [{**r.scores(), "judge_error": r.error} for r in results]

    def _log(self, logger, rows: list[dict], images: list[Image.Image], metrics: dict[str, float], step: int) -> None:
        from lightning.pytorch.loggers import WandbLogger

        if not isinstance(logger, WandbLogger):
            logger.log_metrics(metrics, step=step)
            return
        import wandb

        tables = {}
        for domain in dict.fromkeys(r["domain"] for r in rows):
            data = [
                [r["domain"], r["prompt"], wandb.Image(im, caption=r["prompt"]), *(r.get(m) for m in METRICS)]
                for r, im in zip(rows, images)
                if r["domain"] == domain
            ]
            tables[f"eval/{domain}/table"] = wandb.Table(columns=TABLE_COLUMNS, data=data)
        logger.log_metrics({**metrics, **tables}, step=step)  # one W&B history row for scalars and tables


def domain_metrics(rows: list[dict]) -> dict[str, float]:
    """`eval/<domain>/<metric>`: mean over that domain's prompts; `eval/mean/<metric>`: mean over domains.

    Missing scores (judge off or failed) are left out of the means; a metric no row has is not reported.
    """
    out: dict[str, float] = {}
    per_metric: dict[str, list[float]] = {m: [] for m in METRICS}
    for domain in dict.fromkeys(r["domain"] for r in rows):
        for m in METRICS:
            values = [r[m] for r in rows if r["domain"] == domain and r.get(m) is not None]
            if values:
                out[f"eval/{domain}/{m}"] = sum(values) / len(values)
                per_metric[m].append(out[f"eval/{domain}/{m}"])
    for m, values in per_metric.items():
        if values:
            out[f"eval/mean/{m}"] = sum(values) / len(values)
    return out

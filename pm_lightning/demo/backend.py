"""What the web demo runs: one model session loaded at start-up, each request a `GenerationRequest` (generate's).

Each request writes what `generate` writes (grid.png, frames/, sequence.gif, report.json, index.html) into its own
folder under a temporary root, so the page shows exactly the files the command would produce; Gradio copies them
into its cache when the request returns, so the next request deletes the folders of the earlier ones, and the
root goes when the server stops. One request runs at a time (one model in memory); bad input raises BadInput with
the message the page shows. The LoRA folders are offered by their names under the runs folder (`r1/lora/final`):
no server path reaches the page, and a request can only name an offered folder.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pm_lightning.core.errors import BadInput
from pm_lightning.core.paths import portable
from pm_lightning.core.run_layout import FINAL, RunDir
from pm_lightning.inference.request import GenerationRequest
from pm_lightning.models.lora_names import lora_file_for

PLAIN = "(plain base, no LoRA)"
MAX_UPLOAD_MB = 10


@dataclass
class DemoResult:
    """One request's outputs: files for the page, the adaptive Deltas as rows for a plot, and a summary."""

    folder: Path
    grid: Path
    frames: list[tuple[Path, str]]
    gif: Path
    deltas: list[dict] = field(default_factory=list)
    summary: str = ""
    seconds: float = 0.0


def lora_folders(runs: Path) -> list[str]:
    """Exported stage-1 LoRA folders of the runs under `runs` (`<run>/lora/<tag>`, relative to `runs`), each run's
    `final` first, then newest; stage-2 / ReCraft runs (their `config.yaml` names Stage2Module) are left out: they
    draw no grid."""
    found = []
    for root in sorted(p for p in Path(runs).glob("*") if RunDir(p).loras.is_dir()):
        run = RunDir(root)
        if run.config.is_file() and "Stage2Module" in run.config.read_text(encoding="utf-8", errors="replace"):
            continue
        tags = [t for t in run.loras.iterdir() if t.is_dir() and any(t.glob("*.safetensors"))]
        tags.sort(key=lambda t: (t.name != FINAL, -t.stat().st_mtime))
        found += [t.relative_to(runs).as_posix() for t in tags]
    return found


def stage1_file(runs: Path, folder: str | None, domain: str) -> Path | None:
    """The file that serves `domain` in the offered folder `folder` (relative to `runs`; models/lora_names.py's
    rule); None for the plain base."""
    if not folder or folder == PLAIN:
        return None
    if folder not in lora_folders(runs):  # a request names an offered folder, never a path of its own
        raise BadInput(f"no LoRA folder {folder!r} here; choose one of the list")
    return lora_file_for(Path(runs) / folder, domain)


def delta_rows(report: dict | None) -> list[dict]:
    """One row per pair of the first round (the sequence as sampled): {pair (1-based frames), delta, round, decision}
    (decision: insert / delete / keep); later rounds are in the summary."""
    rows = []
    for entry in (report or {}).get("rounds", [])[:1]:
        applied = {d["pair"]: d["action"] for d in entry["decisions"] if d.get("applied")}
        for p in entry["pairs"]:
            pair = p["pair"][0]
            rows.append(
                {
                    "pair": f"{pair + 1}-{pair + 2}",
                    "delta": p["delta"],
                    "round": str(entry["round"]),
                    "decision": applied.get(pair, "keep"),
                }
            )
    return rows


def adaptive_summary(report: dict | None) -> str:
    """Markdown lines: what each round inserted and deleted."""
    if not report:
        return ""
    lines = []
    for entry in report["rounds"]:
        done = [d for d in entry["decisions"] if d.get("applied")]
        ins = [f"{d['n']} between {d['pair'] + 1} and {d['pair'] + 2}" for d in done if d["action"] == "insert"]
        dels = [f"frame {d['frame'] + 1}" for d in done if d["action"] == "delete"]
        lines.append(
            f"- round {entry['round']}: {entry['frames_before']} -> {entry['frames_after']} frames; "
            f"inserted {', '.join(ins) or 'nothing'}; deleted {', '.join(dels) or 'nothing'}"
        )
    return "\n".join([f"**Adaptive steps** ({report['stopped']}):", *lines])


class DemoBackend:
    """The model session of the demo (loaded once), and one method per tab."""

    def __init__(
        self,
        base: str = "tiny",
        runs: str | Path = "runs",
        out_root: str | Path | None = None,
        device: str | None = None,
        dtype: str | None = None,
    ):
        from pm_lightning.inference.runtime import Runtime
        from pm_lightning.inference.session import Models

        self.base, self.runs = base, Path(runs)
        self.runtime = Runtime.resolve(device, dtype)
        self.models = Models(base, self.runtime)
        self.out_root = Path(out_root or tempfile.mkdtemp(prefix="pm-demo-"))
        if out_root is None:  # ours: gone with the server
            atexit.register(shutil.rmtree, self.out_root, ignore_errors=True)
        self.lock = threading.Lock()
        self.count = 0

    def forget_requests(self) -> None:
        """Delete the folders of earlier requests: the page was served copies of their files (one request runs at
        a time, so none of them is being written)."""
        for old in self.out_root.glob("[0-9]" * 5):
            shutil.rmtree(old, ignore_errors=True)

    def folders(self) -> list[str]:
        return [*lora_folders(self.runs), PLAIN]

    def warm_up(self) -> float:
        """Load the backbone, the default LoRA and the evaluators, and run one small grid; returns the seconds."""
        t0 = time.perf_counter()
        self.text_to_steps("a lego tower", "lego", 4, 0, 2, False, self.folders()[0], resolution=64)
        self.models.encoders(GenerationRequest.clip, GenerationRequest.dino)  # kept for requests
        return time.perf_counter() - t0

    def _request(self, **values) -> GenerationRequest:
        """The request in a fresh folder (the earlier requests' folders deleted); generate's defaults for the rest."""
        self.count += 1
        out = self.out_root / f"{self.count:05d}"
        self.forget_requests()
        try:  # generate's own rules check every value (a seed out of range, ...)
            return GenerationRequest(out=out, base=self.base, **values)
        except ValueError as err:
            raise BadInput(str(err)) from None

    def text_to_steps(self, prompt, domain, frames, seed, steps, adaptive, folder, resolution=None, progress=None):
        """Prompt + domain -> grid (stage 1 with the folder's LoRA), optionally adaptive steps."""
        from pm_lightning.data.grid import grid_to_frames, layout_for
        from pm_lightning.inference.session import grid_resolution, sample_grid

        prompt = check_prompt(prompt)
        frames = int(frames)
        req = self._request(prompt=prompt, domain=domain, frames=frames, seed=int(seed),
                            num_inference_steps=int(steps), adaptive=bool(adaptive))  # fmt: skip
        with self.lock:
            t0 = time.perf_counter()
            _step(progress, 0.05, "loading the LoRA")
            lora = stage1_file(self.runs, folder, domain)
            backbone = self.models.use(None, lora)
            _step(progress, 0.2, "sampling the grid")
            size = grid_resolution(self.base, frames, resolution)
            grid = sample_grid(backbone, prompt, size, req.num_inference_steps, req.guidance, req.seed)
            images = grid_to_frames(grid, *layout_for(frames))
            used = {"stage1": portable(lora) if lora else None}
            return self._finish(req, grid, images, used, [], t0, progress, size)

    def recraft(self, image, prompt, frames, seed, steps, adaptive, progress=None):
        """A finished image -> the steps before it (ReCraft LoRA; `generate --image`)."""
        from pm_lightning.inference.session import first_sequence, grid_resolution

        if not image:
            raise BadInput("upload a finished image first")
        check_upload(Path(image))
        prompt = check_prompt(prompt)
        frames = int(frames)
        req = self._request(prompt=prompt, image=Path(image), frames=frames, seed=int(seed),
                            num_inference_steps=int(steps), adaptive=bool(adaptive))  # fmt: skip
        with self.lock:
            t0 = time.perf_counter()
            _step(progress, 0.1, "ReCraft: sampling the steps before the image")
            size = grid_resolution(self.base, frames, None)
            notes: list[str] = []
            grid, images, used = first_sequence(self.models, req, frames, size, notes)  # grid: the frames laid out
            return self._finish(req, grid, images, used, notes, t0, progress, size)

    def _finish(self, req: GenerationRequest, grid, images, used, notes, t0, progress, size) -> DemoResult:
        from pm_lightning.inference.adaptive_settings import config_from_args
        from pm_lightning.inference.outputs import write_sample
        from pm_lightning.inference.session import captions_for, generation_report, run_adaptive

        timings = {"first_grid_s": round(time.perf_counter() - t0, 3)}
        result = None
        if req.adaptive:
            _step(progress, 0.5, "adaptive steps: scoring pairs, inserting and deleting frames")
            cfg = config_from_args(req)  # the request's encoders' calibration (no adaptive flags here)
            result = run_adaptive(self.models, images, req, cfg, notes)
            timings["adaptive_s"] = round(time.perf_counter() - t0 - timings["first_grid_s"], 3)
        final = result.images if result is not None else images
        captions = captions_for(result, None, len(final))
        settings = dict(base=self.base, frames=len(images), resolution=size)
        report = generation_report(req, self.models, settings, used, notes, result, timings)
        _step(progress, 0.9, "writing the frames")
        write_sample(req.out, grid, final, captions, report)
        out = Path(req.out)
        frame_files = sorted((out / "frames").glob("*.png"))
        summary = "\n\n".join(
            s
            for s in (
                f"{len(final)} frames in {time.perf_counter() - t0:.1f} s (grid: {timings['first_grid_s']:.1f} s)",
                adaptive_summary(result.report if result else None),
                *[f"note: {n}" for n in notes],
            )
            if s
        )
        return DemoResult(
            out,
            out / "grid.png",
            list(zip(frame_files, captions)),
            out / "sequence.gif",
            delta_rows(result.report if result else None),
            summary,
            time.perf_counter() - t0,
        )


def check_prompt(prompt: str | None) -> str:
    prompt = (prompt or "").strip()
    if not prompt:
        raise BadInput("type a prompt first (what should be made, e.g. 'a lego tower of red bricks')")
    if len(prompt) > 1000:
        raise BadInput(f"the prompt has {len(prompt)} characters; keep it under 1000")
    return prompt


def check_upload(path: Path) -> None:
    """An upload the page accepts: an image file under MAX_UPLOAD_MB (`load_user_image` checks the content)."""
    from pm_lightning.data.importers import load_user_image

    size = path.stat().st_size
    if size > MAX_UPLOAD_MB * 2**20:
        raise BadInput(f"{path.name} is {size / 2**20:.0f} MB; upload an image under {MAX_UPLOAD_MB} MB")
    try:
        load_user_image(path, "the uploaded file")
    except BadInput as err:  # name the file as the user knows it, not by the server's upload path
        raise BadInput(str(err).replace(str(path), path.name)) from None


def _step(progress, fraction: float, what: str) -> None:
    if progress is not None:
        progress(fraction, desc=what)

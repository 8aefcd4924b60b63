"""The Gradio page: text + domain -> grid, frames and animation; a finished image -> ReCraft steps; adaptive steps
with their Deltas; LoRA choice, seed and steps. Every handler turns bad input into one line on the page; any other
failure shows one friendly line with a reference, its details in the server log. Gradio's cache is cleaned
(`delete_cache`), and no server path is on the page or in its config.

API names (for `gradio_client`): `/text_to_steps` and `/recraft`, each returning
(grid, frames, sequence gif, Deltas table, summary).
"""

from __future__ import annotations

import logging
import re
import uuid

import gradio as gr
import pandas as pd

from pm_lightning.core.errors import BadInput
from pm_lightning.core.paths import portable
from pm_lightning.data.synthetic_corpus import DOMAINS, HELDOUT_DOMAINS
from pm_lightning.demo.backend import MAX_UPLOAD_MB, DemoBackend

log = logging.getLogger(__name__)
DELETE_CACHE = (600, 3600)  # every 10 minutes, Gradio's cached files older than an hour go
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # no web fonts: the page works offline
CSS = "#grid img, #sequence img {image-rendering: pixelated;}"


def theme() -> gr.themes.Base:
    return gr.themes.Default(font=SYSTEM_FONTS, font_mono=["ui-monospace", "monospace"])


def outputs_of(result) -> tuple:
    deltas = pd.DataFrame(result.deltas or [], columns=["pair", "delta", "round", "decision"])
    frames = [(str(path), caption) for path, caption in result.frames]
    return str(result.grid), frames, str(result.gif), deltas, result.summary


def guarded(fn, *args, progress=None) -> tuple:
    """Run a backend request; bad input (and any failure) becomes a gr.Error message on the page, never a dead app."""
    try:
        return outputs_of(fn(*args, progress=progress))
    except (BadInput, FileNotFoundError) as err:
        raise gr.Error(page_text(err), title="Bad input") from None
    except Exception:  # noqa: BLE001 - the app must stay up; the details go to the server log, not the page
        ref = uuid.uuid4().hex[:8]
        log.exception("demo request failed (reference %s)", ref)
        raise gr.Error(
            f"Something went wrong on the server (reference {ref}); the details are in its log.", title="Error"
        ) from None


def page_text(err: Exception) -> str:
    """An error as one line for the page: whitespace folded, server paths cut to their file names."""
    return SERVER_PATH.sub(r"\1", " ".join(str(err).split()))


SERVER_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.@+-]+/)+([\w.@+-]+)")


def build_page(backend: DemoBackend) -> gr.Blocks:
    domains = list(DOMAINS)
    with gr.Blocks(title="pm_lightning: how things are made", delete_cache=DELETE_CACHE) as page:
        gr.Markdown(
            "## pm_lightning: how things are made\n"
            f"Type what should be made and pick a domain; the model draws the steps as one grid. Base: `{portable(backend.base)}`"
            f"; held-out domains ({', '.join(HELDOUT_DOMAINS)}) use the domain-free LoRA."
        )
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Tab("Text to steps"):
                    prompt = gr.Textbox(label="Prompt", value="", lines=2, elem_id="prompt",
                                        placeholder="a lego tower of eight red bricks on a green baseplate")  # fmt: skip
                    domain = gr.Dropdown(domains, value="lego", label="Domain", elem_id="domain")
                    go = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Tab("Finished image to steps (ReCraft)"):
                    image = gr.File(label=f"Finished image (PNG / JPEG / WebP, < {MAX_UPLOAD_MB} MB)",
                                    type="filepath", elem_id="recraft-image")  # fmt: skip
                    recraft_prompt = gr.Textbox(label="What it is", value="", elem_id="recraft-prompt")
                    go_recraft = gr.Button("Show the steps", variant="primary", elem_id="recraft")
                frames = gr.Radio(["4", "9"], value=str(DOMAINS["lego"]), label="Frames", elem_id="frames-count")
                adaptive = gr.Checkbox(label="Adaptive steps (insert where jumps are large, delete repeats)",
                                       elem_id="adaptive")  # fmt: skip
                with gr.Accordion("Settings", open=False, elem_id="demo-settings"):
                    folders = backend.folders()
                    lora = gr.Dropdown(folders, value=folders[0], label="LoRA (a run's export folder)",
                                       elem_id="lora")  # fmt: skip
                    seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                    steps = gr.Slider(1, 50, value=20, step=1, label="Sampling steps", elem_id="steps")
            with gr.Column(scale=2):
                grid = gr.Image(label="Grid", type="filepath", elem_id="grid", interactive=False)
                with gr.Row():
                    sequence = gr.Image(
                        label="Sequence", type="filepath", elem_id="sequence", interactive=False, height=260
                    )
                    deltas = gr.BarPlot(x="pair", y="delta", color="decision", label="Delta of each pair (round 1)",
                                        elem_id="deltas")  # fmt: skip
                gallery = gr.Gallery(label="Frames", columns=9, height="auto", elem_id="frames")
                summary = gr.Markdown(elem_id="summary")
        outs = [grid, gallery, sequence, deltas, summary]

        def text_to_steps(prompt, domain, frames, seed, steps, adaptive, lora, progress=gr.Progress()):
            return guarded(
                backend.text_to_steps, prompt, domain, frames, seed, steps, adaptive, lora, progress=progress
            )

        def recraft(image, prompt, frames, seed, steps, adaptive, progress=gr.Progress()):
            return guarded(backend.recraft, image, prompt, frames, seed, steps, adaptive, progress=progress)

        text_inputs = [prompt, domain, frames, seed, steps, adaptive, lora]
        domain.change(lambda d: str(DOMAINS.get(d, 9)), domain, frames, api_visibility="private")
        go.click(text_to_steps, text_inputs, outs, api_name="text_to_steps")
        prompt.submit(text_to_steps, text_inputs, outs, api_visibility="private")
        go_recraft.click(recraft, [image, recraft_prompt, frames, seed, steps, adaptive], outs, api_name="recraft")
    return page


def launch(backend: DemoBackend, host: str = "127.0.0.1", port: int = 7860, **kwargs):
    """Queue (one request at a time: one model), size limit on uploads, offline-safe theme; blocks."""
    page = build_page(backend)
    page.queue(default_concurrency_limit=1)
    return page.launch(
        server_name=host,
        server_port=port,
        max_file_size=f"{MAX_UPLOAD_MB}mb",
        theme=theme(),
        css=CSS,
        show_error=True,
        **kwargs,
    )

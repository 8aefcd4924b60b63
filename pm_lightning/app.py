"""The web demo: `python -m pm_lightning.app [--port N]`, a Gradio page on localhost.

    python -m pm_lightning.app                      # the embedded tiny model on CPU, http://127.0.0.1:7860
    python -m pm_lightning.app --base flux-dev --runs runs/ --port 8080

Text + domain -> the grid of steps, its frames and an animation; a finished image -> the steps before it
(ReCraft); adaptive steps with the Delta of each pair. The model and the default LoRA are loaded (and one small
grid run) at start-up, so the first request does not wait for them. Page: `demo/page.py`; requests: `demo/backend.py`.
"""

from __future__ import annotations

import argparse
import os
import sys

from pm_lightning.core.extras import require
from pm_lightning.inference.runtime import add_device_flags


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pm_lightning.app", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines (no authentication!)")
    p.add_argument("--base", default="tiny", help="Flux variant (tiny, flux-dev, ...), diffusers directory or hub id")
    p.add_argument("--runs", default="runs", help="folder of training runs; their <run>/lora/<tag>/ are offered")
    add_device_flags(p)
    p.add_argument("--no-warm-up", action="store_true", help="skip the start-up grid (the first request pays it)")
    args = p.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from an offline machine
    require("gradio", "the web demo")
    # after the check: gradio (the optional extra `demo`) and the inference stack, 6.1 s without gradio (docs/ARCHITECTURE.md, "Start-up")
    from pm_lightning.demo.backend import DemoBackend
    from pm_lightning.demo.page import launch

    backend = DemoBackend(args.base, args.runs, device=args.device, dtype=args.dtype)
    if not args.no_warm_up:
        print(f"loading {args.base} and warming up ...", flush=True)
        print(f"ready in {backend.warm_up():.1f} s", flush=True)
    launch(backend, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())

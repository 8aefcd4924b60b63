"""The web demo: `python -m pm_lightning.app [--port N]`, a Gradio page on localhost.

    python -m pm_lightning.app                      # the embedded tiny model on CPU, http://127.0.0.1:7860
    python -m pm_lightning.app --base flux-dev --runs runs/ --port 8080
    PM_DEMO_AUTH=me:secret python -m pm_lightning.app --host 0.0.0.0   # other machines: a login is required

Text + domain -> the grid of steps, its frames and an animation; a finished image -> the steps before it
(ReCraft); adaptive steps with the Delta of each pair. The model and the default LoRA are loaded (and one small
grid run) at start-up, so the first request does not wait for them. Serving beyond this machine (a --host other
than loopback) needs a login (`--auth USER:PASSWORD`, or PM_DEMO_AUTH, which keeps it out of the process list).
Each request's files are deleted once the page has them, Gradio's cache after an hour; errors show one line, the
details go to the server log. Page: `demo/page.py`; requests: `demo/backend.py`.
"""

from __future__ import annotations

import argparse
import os
import sys

from pm_lightning.core import validate as v
from pm_lightning.core.extras import require
from pm_lightning.inference.flags import add_device_flags

PROG = "python -m pm_lightning.app"
AUTH_ENV = "PM_DEMO_AUTH"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def credentials(text: str) -> tuple[str, str]:
    """argparse `type=` of `--auth`: USER:PASSWORD, both non-empty."""
    user, sep, password = text.partition(":")
    if not (sep and user and password):
        raise argparse.ArgumentTypeError("give USER:PASSWORD (both non-empty)")
    return user, password


def main(argv: list[str] | None = None) -> int:
    p = v.Parser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--port", type=v.PORT, default=7860, help=v.PORT.describe())
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines (needs --auth)")
    p.add_argument(
        "--auth", type=credentials, default=None, metavar="USER:PASSWORD", help=f"login for the page (or {AUTH_ENV})"
    )
    p.add_argument("--base", default="tiny", help="Flux variant (tiny, flux-dev, ...), diffusers directory or hub id")
    p.add_argument("--runs", default="runs", help="folder of training runs; their <run>/lora/<tag>/ are offered")
    add_device_flags(p)
    p.add_argument("--no-warm-up", action="store_true", help="skip the start-up grid (the first request pays it)")
    args = p.parse_args(argv)
    if args.auth is None and os.environ.get(AUTH_ENV):
        try:
            args.auth = credentials(os.environ[AUTH_ENV])
        except argparse.ArgumentTypeError as err:
            p.error(f"{AUTH_ENV}: {err}")
    if args.host not in LOOPBACK and args.auth is None:
        p.error(
            f"argument --host: {args.host} serves other machines: give --auth USER:PASSWORD (or set {AUTH_ENV}), "
            "or keep the default 127.0.0.1"
        )
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from an offline machine
    require("gradio", "the web demo")
    # after the check: gradio (the optional extra `demo`) and the inference stack, 6.1 s without gradio (docs/ARCHITECTURE.md, "Start-up")
    from pm_lightning.demo.backend import DemoBackend
    from pm_lightning.demo.page import launch

    backend = DemoBackend(args.base, args.runs, device=args.device, dtype=args.dtype)
    if not args.no_warm_up:
        print(f"loading {args.base} and warming up ...", flush=True)
        print(f"ready in {backend.warm_up():.1f} s", flush=True)
    launch(backend, args.host, args.port, auth=args.auth)
    return 0


if __name__ == "__main__":
    sys.exit(main())

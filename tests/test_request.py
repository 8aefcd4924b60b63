"""inference/request.py: the typed request of one generation, the same from the flags and from code."""

from __future__ import annotations

from pathlib import Path

import pytest

from pm_lightning.inference.cache import CacheConfig
from pm_lightning.inference.flags import generate_parser
from pm_lightning.inference.request import GenerationRequest, request_from_args


def test_the_flags_defaults_are_the_requests():
    """What the demo and the ablation build in code equals what `generate` parses from the same values."""
    args = generate_parser().parse_args(["--prompt", "a tower", "--out", "o"])
    assert request_from_args(args) == GenerationRequest("a tower", Path("o"))
    argv = ["--prompt", "a tower", "--out", "o", "--seed", "7", "--frames", "4", "--num-inference-steps", "3",
            "--guidance", "2", "--cache", "taylorseer", "--cache-interval", "3", "--adaptive", "--clip", "c"]  # fmt: skip
    want = GenerationRequest("a tower", Path("o"), seed=7, frames=4, num_inference_steps=3, guidance=2.0,
                             cache=CacheConfig("taylorseer", interval=3), adaptive=True, clip="c")  # fmt: skip
    assert request_from_args(generate_parser().parse_args(argv)) == want


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"seed": -1}, "--seed: must be an integer from 0"),
        ({"num_inference_steps": 0}, "--num-inference-steps: must be an integer from 1"),
        ({"guidance": float("nan")}, "--guidance: must be a finite number"),
        ({"resolution": 100}, "--resolution: must be a multiple of 16"),
        ({"frames": 5}, r"--frames: must be one of \(4, 9\)"),
    ],
)
def test_a_request_built_in_code_is_refused_as_the_flag_would_be(values, message):
    with pytest.raises(ValueError, match=message):
        GenerationRequest("a tower", Path("o"), **values)
    with pytest.raises(SystemExit):  # the command line refuses the same value
        flag = "--" + next(iter(values)).replace("_", "-")
        generate_parser().parse_args(["--prompt", "a tower", "--out", "o", flag, str(next(iter(values.values())))])

"""`python -m pm_lightning.text_cache` and `text_cache_only`: a run that never loads the text encoders, bit-identical
to one that does, and a caption missing from the cache stops with the caption and the command."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

from pm_lightning import fit, text_cache
from pm_lightning.core.config_files import config_prompts
from pm_lightning.models.backbone import FluxBackbone
from pm_lightning.models.text_embedding_cache import MissingTextEmbeddings
from pm_lightning.models.text_embeddings import shard_captions
from tests.test_fit import adapters_of, small_config, with_outputs

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")


def test_shard_captions_with_and_without_stage2_step_texts(tiny_shards):
    plain = shard_captions([tiny_shards["train"]])
    with tarfile.open(next(iter(sorted(Path(tiny_shards["train"]).glob("*.tar"))))) as tar:
        meta = json.loads(tar.extractfile(next(m for m in tar if m.name.endswith(".json"))).read())
    assert meta["caption"] in plain and len(plain) == len(set(plain))
    both = shard_captions([tiny_shards["train"]], step_text=True)
    n = len(meta["steps"])
    mine = [c for c in both if c.startswith(meta["caption"] + ", between: ")]
    assert n > 2 and len(mine) >= n * (n - 1) // 2  # every pair b < c of its steps (other sequences may share it)
    assert set(plain) < set(both)


def test_config_prompts_are_the_sample_grid_captions():
    assert config_prompts("experiments/fabric_toys.yaml") == [
        "How to make a fabric teddy bear, step by step",
        "How to sew a plush rabbit from felt, step by step",
    ]


def test_missing_caption_names_it_and_the_command(tiny_base, tmp_path):
    backbone = FluxBackbone.from_pretrained(tiny_base, text_cache_dir=tmp_path, text_encoders=False)
    assert backbone.text_encoder is None and backbone.text_encoder_2 is None
    with pytest.raises(MissingTextEmbeddings, match=r"'a lego tower'.*python -m pm_lightning.text_cache"):
        backbone.encode_text(["a lego tower"])
    with pytest.raises(ValueError, match="text_cache_dir"):
        from pm_lightning.training.stage1 import Stage1Module

        Stage1Module(text_cache_only=True)


def test_a_cached_run_never_loads_the_text_encoders_and_trains_the_same(tiny_base, tiny_shards, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    plain = with_outputs(small_config(tmp_path / "plain", tiny_base, tiny_shards, max_steps=2), every=2)
    assert fit.main(["--config", str(plain)]) == 0
    cached = with_outputs(
        small_config(tmp_path / "cached", tiny_base, tiny_shards, 2, text_cache_dir=str(cache), text_cache_only=True),
        every=2,
    )
    argv = ["--shards", tiny_shards["train"], "--prompts", str(cached), "--base", tiny_base, "--out", str(cache)]
    assert text_cache.main(argv) == 0
    assert text_cache.main(argv) == 0  # a second call encodes nothing new

    def refuse(*args, **kwargs):
        raise AssertionError("a text encoder was loaded")

    import transformers

    monkeypatch.setattr(transformers.T5EncoderModel, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.CLIPTextModel, "from_pretrained", refuse)
    assert fit.main(["--config", str(cached)]) == 0
    a = adapters_of(tmp_path / "plain" / "run" / "checkpoints" / "last.ckpt")
    b = adapters_of(tmp_path / "cached" / "run" / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "cached" / "run" / "samples" / "final.png").is_file()  # prompts from the cache too
    saved = yaml.safe_load((tmp_path / "cached" / "run" / "config.yaml").read_text())
    assert saved["model"]["init_args"]["text_cache_only"] is True

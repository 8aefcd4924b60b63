"""Lean exports (issue 23), through one short fit of a bf16 base (4 steps): LoRA files in the base's dtype (bf16)
that stock diffusers loads, every domain exported at the end and at the export's own interval (not with every
checkpoint), and checkpoints that hold the trainable tensors only."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file

from pm_lightning import export, fit
from pm_lightning.models.lora_files import adapter_tensors
from tests.test_fit import small_config

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

STEPS, CHECKPOINT_EVERY, EXPORT_EVERY = 4, 1, 2


TEARDOWNS: list[bool] = []  # per strategy teardown of the run: were the final LoRA files written before it


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_base, tiny_shards):
    """4 steps of a bf16 base (model.init_args.dtype), a checkpoint every step, LoRA exports every 2 steps."""
    from lightning.pytorch.strategies import Strategy

    tmp = tmp_path_factory.mktemp("lean")
    path = small_config(tmp, tiny_base, tiny_shards, max_steps=STEPS, every=CHECKPOINT_EVERY, dtype="bfloat16")
    cfg = yaml.safe_load(path.read_text())
    cfg["trainer"]["callbacks"].append(
        {
            "class_path": "pm_lightning.training.callbacks.LoraExport",
            "init_args": {"every_n_train_steps": EXPORT_EVERY},
        }
    )
    path.write_text(yaml.safe_dump(cfg))
    teardown = Strategy.teardown

    def recorded(strategy):  # Lightning's teardown moves the model (the whole base) to CPU memory
        TEARDOWNS.append(any((tmp / "run" / "lora" / "final").glob("*.safetensors")))
        teardown(strategy)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Strategy, "teardown", recorded)
        assert fit.main(["--config", str(path)]) == 0
    return tmp / "run"


def test_the_final_export_is_written_before_the_strategy_tears_down(run):
    """Lightning's teardown moves the model to CPU memory (`FluxDDPStrategy` keeps the frozen base out of that move,
    tests/test_teardown.py; the single-device strategy moves it all): the final export comes before it
    (`on_train_end`). Checked red with the export in `on_fit_end` (after the teardown), as it was."""
    assert TEARDOWNS and all(TEARDOWNS)


def test_every_domain_is_exported_at_its_own_interval_and_at_the_end_not_with_every_checkpoint(run):
    """Step 4 is the last: `final` holds it, written once. Checked red: with the former export in
    `on_save_checkpoint` the folders are step-000001..4 and final; without the last-step rule, step-000004 too."""
    assert len(list((run / "checkpoints").glob("epoch=*.ckpt"))) == STEPS // CHECKPOINT_EVERY
    assert sorted(p.name for p in (run / "lora").iterdir()) == ["final", "step-000002"]
    assert {p.name for p in (run / "lora" / "step-000002").glob("*.safetensors")} == {
        p.name for p in (run / "lora" / "final").glob("*.safetensors")
    }


def test_a_bf16_base_exports_bf16_files_equal_to_the_checkpoint_rounded_that_stock_diffusers_loads(
    run, tmp_path, tiny_base
):
    """dtype "auto" follows the base: bf16 here. The file is the checkpoint's fp32 adapters (exported by
    `python -m pm_lightning.export --dtype float32`) rounded to bf16, half its size, and stock
    `FluxPipeline.load_lora_weights` loads every tensor of it unchanged. Checked red: with "auto" resolved to
    float32 (the former fixed dtype) the tensors are fp32 and the file is as large as the fp32 one."""
    from diffusers import FluxPipeline
    from peft import get_peft_model_state_dict

    fp32_file, bf16_file = tmp_path / "lego.safetensors", run / "lora" / "final" / "lego.safetensors"
    export.main(["--ckpt", str(run / "checkpoints" / "last.ckpt"), "--domain", "lego", "--out", str(fp32_file)])
    fp32, bf16 = load_file(fp32_file), load_file(bf16_file)
    assert fp32.keys() == bf16.keys() and fp32
    assert all(v.dtype == torch.bfloat16 for v in bf16.values())
    for key, value in fp32.items():
        assert torch.equal(bf16[key], value.to(torch.bfloat16)), key  # round to nearest, nothing else
        torch.testing.assert_close(bf16[key].float(), value, rtol=2**-8, atol=0)  # bf16: 8 significant bits
    assert bf16_file.stat().st_size < 0.55 * fp32_file.stat().st_size

    pipe = FluxPipeline.from_pretrained(tiny_base, dtype=torch.bfloat16)
    pipe.load_lora_weights(str(bf16_file), adapter_name="lego")
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name="lego")
    assert {f"transformer.{k}" for k in loaded} == set(bf16)
    assert all(torch.equal(loaded[k[len("transformer.") :]], v) for k, v in bf16.items())


def test_checkpoints_hold_the_trainable_tensors_only(run):
    """No frozen base tensor in the checkpoint file a fit writes (tests/test_stage1.py checks the hook on a module):
    every key is an adapter tensor (the LoRA factors and masked gates the export reads). Checked red: without the filter in
    `FlowMatchingModule.on_save_checkpoint` the base's `...base_layer.weight` and the other frozen tensors are in."""
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert state and len(adapter_tensors(state)) == len(state)
    assert not any("base_layer" in k for k in state)
    kinds = {k.split(".lora_")[1].split(".")[0] for k in state}
    assert kinds == {"A", "B", "gate"}


@pytest.mark.parametrize(
    ("args", "message"),
    [({"dtype": "float64"}, "LoraExport.dtype: 'float64' unknown"), ({"every_n_train_steps": -1}, "< 0")],
)
def test_bad_export_settings_fail_when_the_config_loads_naming_the_key(args, message):
    from pm_lightning.training.callbacks import LoraExport

    with pytest.raises(ValueError, match=message):
        LoraExport(**args)

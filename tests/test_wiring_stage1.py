"""Stage 1's wiring, through a real training step: the routing the adapter layers see, the gate gradients after a
real backward, the loss the step returns against the paper's formula, the alignment teacher's missing graph, and
the noise of two ranks.

Each test was checked red against the mutation its docstring names (applied by hand, test run, file restored with
`git checkout`); the mutation testing of docs/TESTING.md runs such mutations automatically."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pm_lightning.data.datamodule import ProcessDataModule
from pm_lightning.data.pixels import float_pixels
from pm_lightning.models.adapter_config import AdapterConfig
from pm_lightning.models.adapters import add_adapters, tuner_layers
from pm_lightning.models.alignment import AlignmentConfig, teacher_features
from pm_lightning.training.optim import OptimizerConfig
from pm_lightning.training.stage1 import Stage1Module
from tests.conftest import TRAIN_DOMAINS
from tests.helpers import random_inputs, tiny_transformer

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # a step outside a Trainer


@pytest.fixture(scope="module")
def batch(tiny_shards) -> dict:
    dm = ProcessDataModule(
        tiny_shards["train"], domains=TRAIN_DOMAINS, resolution=96, batch_size=4, num_workers=0, shuffle_buffer=16
    )
    return float_pixels(next(iter(dm.train_dataloader())))  # [-1, 1], as the Trainer's batch-transfer hook makes it


def stage1(tiny_base, alignment: AlignmentConfig | None = None, **kwargs) -> Stage1Module:
    """A masked stage-1 module (rank 4) whose B is moved off zero, so gates and alignment have something to do;
    `kwargs`: other Stage1Module arguments (flow, ...). Without the gates' L1 term (mask_l1 0), so the step's loss
    is flow matching + alignment alone and only the batch's domains' gates get a gradient (the L1 term's own test:
    tests/test_adapter_masks.py)."""
    module = Stage1Module(
        base=tiny_base,
        domains=TRAIN_DOMAINS,
        adapter=AdapterConfig(kind="masked", rank=4, mask_l1=0.0),
        alignment=alignment or AlignmentConfig(enabled=False),
        optimizer=OptimizerConfig(name="adamw", lr=1e-3),
        **kwargs,
    )
    module.configure_model()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in module.transformer.named_parameters():
            if p.requires_grad and "lora_B" in name:
                p.normal_(0, 0.02)
    return module.train()


def gate_tables(module: Stage1Module) -> list[torch.Tensor]:
    """Every distinct (num_domains, g) gate parameter of the model."""
    found = {}
    for layer in tuner_layers(module.transformer):
        for gate in getattr(layer, "lora_gate", {}).values():
            found[id(gate)] = gate
    return list(found.values())


def test_a_training_step_routes_each_sample_to_its_domain_and_trains_exactly_those_gates(tiny_base, batch):
    """Every adapter layer sees the batch's own domains during the step's forward, and after the backward the gate
    rows of the batch's domains have gradients while the other domains' rows have none.
    Checked red: with `set_domains(self.transformer, None)` in Stage1Module.losses, the layers see None and no gate
    gets a gradient."""
    module = stage1(tiny_base)
    seen = []
    hooks = [
        layer.register_forward_pre_hook(lambda m, args: seen.append(m.domains))
        for layer in tuner_layers(module.transformer)
        if hasattr(layer, "lora_gate")
    ]
    loss = module.training_step(batch, 0)
    for h in hooks:
        h.remove()
    loss.backward()
    assert seen and all(d is not None and torch.equal(d.cpu(), batch["domain"]) for d in seen)
    used = sorted(set(batch["domain"].tolist()))
    assert len(used) < len(TRAIN_DOMAINS)  # some domains are absent from the batch: their rows must stay untouched
    for gate in gate_tables(module):
        assert gate.grad is not None
        rows = gate.grad.abs().sum(1)  # (num_domains,)
        assert all(rows[d] > 0 for d in used)
        assert all(rows[d] == 0 for d in range(len(TRAIN_DOMAINS)) if d not in used)


def test_the_step_s_loss_is_flow_matching_plus_lambda_t_times_alignment(tiny_base, batch):
    """With the linear schedule, lambda(t) = lambda0 (1 - t) differs per sample; the loss the training step returns
    (what Lightning back-propagates) equals mean_b[L_fm(b) + lambda0 (1 - t_b) L_sup(b)], lambda written out here.
    Checked red: with `terms["align"].mean()` (no lambda) in Stage1Module.training_step the returned loss is off by
    mean((1 - lambda) * L_sup)."""
    module = stage1(tiny_base, AlignmentConfig(enabled=True, lambda0=0.5, schedule="linear"))
    terms = module.losses(batch, step=0)  # the same noise key as the first training step
    loss = module.training_step(batch, 0)
    fm, align, t = terms["fm"].detach(), terms["align"].detach(), terms["t"]
    assert (align > 0).all() and t.unique().numel() == t.numel()  # the term and the weights matter
    expected = (fm + 0.5 * (1 - t) * align).mean()
    assert loss.detach().item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_alignment_teacher_carries_no_graph_even_when_its_inputs_require_grad():
    """The teacher is the base model under no_grad: with inputs that require grad, its features carry no graph, and
    a loss on student minus teacher sends into the inputs only the student's gradient.
    Checked red: with `torch.no_grad()` removed from teacher_features, the teacher's features require grad."""
    model = tiny_transformer()
    add_adapters(model, AdapterConfig(kind="lora", rank=4))
    inputs = random_inputs(model)
    x = inputs["hidden_states"].requires_grad_(True)  # (B, N, 64)
    teacher = teacher_features(model, inputs, [0, 2])
    assert all(not f.requires_grad and f.grad_fn is None for f in teacher.values())
    student = model(**inputs)[0]  # (B, N, 64)
    (student.sum() - sum(f.sum() for f in teacher.values())).backward()  # only the student's path reaches x
    only_student = torch.autograd.grad(model(**inputs)[0].sum(), x)[0]
    assert torch.allclose(x.grad, only_student)


def test_two_ranks_draw_different_noise_and_timesteps_and_each_rank_draws_the_same_again(tiny_base):
    """`draw_noise` seeds from (seed, step, rank); the rank comes from the module's `global_rank`, i.e. the trainer's,
    simulated here by a trainer stand-in with ranks 0 and 1 (DDP and FSDP give each process its own).
    Checked red: with the rank left out of the seed in `step_generator` (training/flow.py), both ranks draw the same
    noise and t."""
    module = Stage1Module(base=tiny_base, domains=TRAIN_DOMAINS)
    x0 = torch.zeros(4, 36, 64)  # (B, N, 64)
    draws = {}
    for rank in (0, 1, 0):
        module._trainer = SimpleNamespace(global_rank=rank, global_step=3, accumulate_grad_batches=1)
        noise, t = module.draw_noise(x0, module.noise_key(3))
        if rank in draws:
            assert torch.equal(draws[rank][0], noise) and torch.equal(draws[rank][1], t)
        draws[rank] = noise, t
    module._trainer = None
    assert not torch.equal(draws[0][0], draws[1][0]) and not torch.equal(draws[0][1], draws[1][1])
    assert (draws[0][1] - draws[1][1]).abs().min() > 0  # no sample shares its t with the other rank

"""Reference layouts (stage 2 / ReCraft): frame selection, token masks, clean references. Pure functions."""

from __future__ import annotations

import pytest
import torch

from pm_lightning.data.grid import serpentine_cells, tensor_frames_to_grid
from pm_lightning.data.reference_cells import (
    cell_token_mask,
    check_cell,
    dual_frames,
    dual_windows,
    reference_positions,
    resize_frames,
    select_dual_frames,
    selection_generator,
    stage2_caption,
    with_clean_references,
)
from pm_lightning.models.backbone import image_ids, pack


@pytest.mark.parametrize("n,max_gap", [(9, 1), (9, 2), (9, 3), (4, 1), (4, 3), (16, 2)])
def test_selection_keeps_temporal_order_and_respects_max_gap(n, max_gap):
    g = torch.Generator().manual_seed(0)
    seen, windows = set(), dual_windows(n, max_gap)
    for _ in range(20 * len(windows)):
        w = select_dual_frames(n, max_gap, g)
        assert len(w) == 4 and all(0 < b - a <= max_gap for a, b in zip(w, w[1:])) and w[-1] < n
        seen.add(w)
    assert seen == set(windows)  # every valid window is drawn


def test_four_frame_sequences_give_the_whole_sequence_and_gap_one_is_consecutive():
    assert dual_windows(4, 3) == [(0, 1, 2, 3)]
    assert dual_windows(9, 1) == [(i, i + 1, i + 2, i + 3) for i in range(6)]
    assert (0, 2, 4, 6) in dual_windows(9, 2) and (0, 3, 4, 5) not in dual_windows(9, 2)
    with pytest.raises(ValueError, match="at least 4 frames"):
        select_dual_frames(3, 2)
    with pytest.raises(ValueError, match="max_gap"):
        dual_windows(9, 0)


def test_selection_generator_depends_on_seed_step_rank_only():
    draw = lambda *a: [
        select_dual_frames(9, 2, selection_generator(*a)),
        torch.rand(4, generator=selection_generator(*a)),
    ]
    a, b = draw(0, 5, 0), draw(0, 5, 0)
    assert a[0] == b[0] and torch.equal(a[1], b[1])
    assert (
        not torch.equal(draw(0, 6, 0)[1], a[1])
        and not torch.equal(draw(0, 5, 1)[1], a[1])
        and not torch.equal(draw(1, 5, 0)[1], a[1])
    )


def labelled_grid(rows: int, cols: int, cell_tokens: int) -> torch.Tensor:
    """(1, 16, h, w) latent grid whose every value in serpentine cell k is k."""
    side = 2 * cell_tokens
    frames = torch.arange(rows * cols, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 16, side, side)
    return tensor_frames_to_grid(frames, rows, cols)[None]


@pytest.mark.parametrize(
    "mode,rows,cols,cell_tokens,expected_cell",
    [
        ("dual", 2, 2, 4, [(0, 0), (1, 0)]),  # top left and bottom left
        ("recraft", 3, 3, 4, [(2, 2)]),  # bottom right
        ("recraft", 2, 2, 6, [(1, 0)]),  # bottom left: the last serpentine cell, in training and inference alike
    ],
)
def test_token_masks_pick_exactly_the_reference_cells(mode, rows, cols, cell_tokens, expected_cell):
    positions = reference_positions(mode, rows, cols)
    assert [serpentine_cells(rows, cols)[k] for k in positions] == expected_cell
    grid = labelled_grid(rows, cols, cell_tokens)  # (1, 16, h, w)
    ids = image_ids(*grid.shape[-2:])  # (N, 3)
    mask = cell_token_mask(ids, rows, cols, positions)  # (N,)
    cell_of_token = pack(grid)[0, :, 0].long()  # (N,) through the real packing order
    assert torch.equal(mask, torch.isin(cell_of_token, torch.tensor(positions)))
    assert int(mask.sum()) == len(positions) * cell_tokens**2
    # geometrically: the masked tokens are the rectangle(s) of the expected cells
    r, c = ids[:, 1].long() // cell_tokens, ids[:, 2].long() // cell_tokens
    by_rect = torch.zeros_like(mask)
    for er, ec in expected_cell:
        by_rect |= (r == er) & (c == ec)
    assert torch.equal(mask, by_rect)


def test_token_mask_rejects_grids_that_do_not_split_into_whole_cells():
    with pytest.raises(ValueError, match="whole tokens"):
        cell_token_mask(image_ids(10, 10), 2, 2, [0])  # 5x5 tokens into 2x2 cells


def test_layout_errors_name_the_problem():
    with pytest.raises(ValueError, match="2x2"):
        reference_positions("dual", 3, 3)
    with pytest.raises(ValueError, match="mode"):
        reference_positions("single", 2, 2)
    with pytest.raises(ValueError, match="multiple of 16"):
        check_cell(40)


def test_clean_references_are_exact_copies_of_x0():
    g = torch.Generator().manual_seed(0)
    x0, xt = torch.randn(2, 16, 64, generator=g), torch.randn(2, 16, 64, generator=g)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, :4], mask[1, 8:] = True, True
    out = with_clean_references(xt, x0, mask)
    assert torch.equal(out[mask], x0[mask]) and torch.equal(out[~mask], xt[~mask])


def test_dual_frames_cut_pick_and_resize_each_frame_on_its_own():
    frames = torch.linspace(-1, 1, 9).view(9, 1, 1, 1).expand(9, 3, 32, 32)  # frame k is constant
    grid = tensor_frames_to_grid(frames, 3, 3)  # (3, 96, 96)
    out, picked = dual_frames(grid, 3, 3, cell=48, max_gap=2, generator=torch.Generator().manual_seed(3))
    assert out.shape == (4, 3, 48, 48) and list(picked) == sorted(picked)
    for k, i in enumerate(picked):  # constant frames stay constant: no bleeding across cells
        assert torch.allclose(out[k], frames[i, :, :1, :1].expand(3, 48, 48), atol=1e-5)
    assert torch.equal(resize_frames(frames[:2], 32), frames[:2])


def test_caption_with_and_without_step_texts():
    steps = ["sketch", "outline", "colour", "shade", "finish"]
    assert stage2_caption("a cat", steps, (1, 2), step_text=False) == "a cat"
    assert stage2_caption("a cat", steps, (1, 2), step_text=True) == "a cat, between: outline; colour"
    assert stage2_caption("a cat", [], (1, 2), step_text=True) == "a cat"

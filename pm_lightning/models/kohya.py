"""Flux LoRA state dicts in kohya sd-scripts format (`lora_unet_...` keys with alphas), what ComfyUI, Forge and
kohya-based tools read.

kohya names the modules of Black Forest Labs' original Flux code, where a block's q, k and v (and, in a single
block, the MLP input too) are one fused Linear. A diffusers LoRA has one A/B pair per member; the fused module gets
them as one block-diagonal LoRA of rank n*r: ``lora_down = [A_1; ...; A_n]`` (n*r, k) and ``lora_up =
blockdiag(B_1, ..., B_n)`` (sum d_i, n*r), which is exactly ``sum_i B_i A_i`` placed in each member's rows. A
member without adapter gets zero rows (A = 0, B = 0). diffusers' kohya reader
(`lora_conversion_utils._convert_kohya_flux_lora_to_diffusers`) recognises the block-diagonal form and splits it
back into the members, so the same seed gives the same image from either file.

The alpha written for each module is its rank: the alpha / r scale is already folded into B (`domain_lora_state_dict`),
so readers apply scale 1.
"""

from __future__ import annotations

import re

import torch
from torch import nn

# diffusers module (relative to the block) -> (kohya module, member position) for fused modules, else position None
DOUBLE = {
    "attn.to_q": ("img_attn_qkv", 0),
    "attn.to_k": ("img_attn_qkv", 1),
    "attn.to_v": ("img_attn_qkv", 2),
    "attn.to_out.0": ("img_attn_proj", None),
    "ff.net.0.proj": ("img_mlp_0", None),
    "ff.net.2": ("img_mlp_2", None),
    "norm1.linear": ("img_mod_lin", None),
    "attn.add_q_proj": ("txt_attn_qkv", 0),
    "attn.add_k_proj": ("txt_attn_qkv", 1),
    "attn.add_v_proj": ("txt_attn_qkv", 2),
    "attn.to_add_out": ("txt_attn_proj", None),
    "ff_context.net.0.proj": ("txt_mlp_0", None),
    "ff_context.net.2": ("txt_mlp_2", None),
    "norm1_context.linear": ("txt_mod_lin", None),
}
SINGLE = {
    "attn.to_q": ("linear1", 0),
    "attn.to_k": ("linear1", 1),
    "attn.to_v": ("linear1", 2),
    "proj_mlp": ("linear1", 3),
    "proj_out": ("linear2", None),
    "norm.linear": ("modulation_lin", None),
}
BLOCKS = {"transformer_blocks": ("double_blocks", DOUBLE), "single_transformer_blocks": ("single_blocks", SINGLE)}
_KEY = re.compile(
    r"^(?:transformer\.)?(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)\.lora_(A|B)\.weight$"
)


def kohya_name(module: str) -> tuple[str, int | None]:
    """`transformer_blocks.3.attn.to_k` -> ("lora_unet_double_blocks_3_img_attn_qkv", 1)."""
    match = _KEY.match(module + ".lora_A.weight")
    if match is None or match.group(3) not in BLOCKS[match.group(1)][1]:
        raise ValueError(f"no kohya name for Flux module {module!r} (only the Linears of the Flux blocks have one)")
    block, table = BLOCKS[match.group(1)]
    target, position = table[match.group(3)]
    return f"lora_unet_{block}_{match.group(2)}_{target}", position


def _members(block_list: str, fused: str) -> list[str]:
    """The diffusers members of one fused kohya module, in their order (q, k, v[, mlp])."""
    return [m for _, m in sorted((pos, m) for m, (name, pos) in BLOCKS[block_list][1].items() if name == fused)]


def diffusers_to_kohya(
    state_dict: dict[str, torch.Tensor], transformer: nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """A diffusers Flux LoRA (`<module>.lora_A.weight` / `.lora_B.weight`, optional `transformer.` prefix, scale 1)
    -> kohya keys (`<name>.lora_down.weight`, `.lora_up.weight`, `.alpha`). `transformer` (meta is enough) gives the
    shapes of fused members that carry no adapter; without it every member of a fused module must be present."""
    pairs: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        match = _KEY.match(key)
        if match is None:
            raise ValueError(f"{key!r} is not a LoRA tensor of a Flux block (diffusers format)")
        block_list, index, module, ab = match.groups()
        pairs.setdefault((block_list, index, module), {})[ab] = value
    fused: dict[tuple[str, str, str, str], dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
    out: dict[str, torch.Tensor] = {}
    for (block_list, index, module), ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"{block_list}.{index}.{module} has lora_{''.join(ab)} without its partner")
        name, position = kohya_name(f"{block_list}.{index}.{module}")
        if position is None:
            _put(out, name, ab["A"], ab["B"])
        else:
            target = BLOCKS[block_list][1][module][0]
            fused.setdefault((block_list, index, name, target), {})[position] = (ab["A"], ab["B"])
    for (block_list, index, name, target), parts in fused.items():
        members = _members(block_list, target)
        rank = {a.shape[0] for a, _ in parts.values()}
        if len(rank) != 1:
            raise ValueError(f"{name}: members of one fused module must share a rank, got {sorted(rank)}")
        r, (a0, b0) = rank.pop(), next(iter(parts.values()))
        downs, ups = [], []
        for pos, member in enumerate(members):
            if pos in parts:
                a, b = parts[pos]
            else:
                if transformer is None:
                    raise ValueError(f"{name}: {member} has no adapter; pass the transformer for its shape")
                linear = transformer.get_submodule(f"{block_list}.{index}.{member}")
                linear = getattr(linear, "base_layer", linear)
                a = torch.zeros(r, a0.shape[1], dtype=a0.dtype)
                b = torch.zeros(linear.out_features, r, dtype=b0.dtype)
            downs.append(a)
            ups.append(b)
        _put(out, name, torch.cat(downs), torch.block_diag(*ups))
    return out


def _put(out: dict[str, torch.Tensor], name: str, down: torch.Tensor, up: torch.Tensor) -> None:
    out[f"{name}.lora_down.weight"] = down.contiguous()
    out[f"{name}.lora_up.weight"] = up.contiguous()
    out[f"{name}.alpha"] = torch.tensor(float(down.shape[0]), dtype=down.dtype)


def kohya_metadata(rank: int, domain: str) -> dict[str, str]:
    """The sd-scripts metadata fields tools read to recognise a Flux LoRA (all values are strings)."""
    return {
        "ss_network_module": "networks.lora_flux",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(rank),
        "ss_base_model_version": "flux1",
        "modelspec.architecture": "flux-1-dev/lora",
        "pm_lightning.domain": domain,
    }

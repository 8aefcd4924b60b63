"""Multi-GPU strategies for Flux: FSDP wraps the two Flux block classes; DeepSpeed ZeRO-2/3 via Lightning.

Sharding rules are data: FLUX_BLOCKS is diffusers' `FluxTransformer2DModel._no_split_modules`.
"""

from __future__ import annotations

from lightning.pytorch.strategies import FSDPStrategy


def flux_block_classes() -> set[type]:
    """The classes FSDP wraps (and checkpoints): one unit per double- or single-stream block."""
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock

    return {FluxTransformerBlock, FluxSingleTransformerBlock}


class FluxFSDPStrategy(FSDPStrategy):
    """FSDP with one unit per Flux block, the frozen base sharded too, optional activation checkpointing."""

    def __init__(
        self,
        sharding_strategy: str = "FULL_SHARD",
        activation_checkpointing: bool = True,
        cpu_offload: bool = False,
        state_dict_type: str = "full",
        **kwargs,
    ):
        """
        Args:
            sharding_strategy: FULL_SHARD (parameters, gradients and optimizer state sharded; the frozen
                base included), SHARD_GRAD_OP, HYBRID_SHARD (shard within a node, replicate across nodes).
            activation_checkpointing: recompute each Flux block in the backward pass.
            cpu_offload: offload parameters to CPU (slow; for small GPUs).
            state_dict_type: "full" gathers the (adapter-only) checkpoint on rank 0.
        """
        blocks = flux_block_classes()
        super().__init__(
            auto_wrap_policy=blocks,
            activation_checkpointing_policy=blocks if activation_checkpointing else None,
            sharding_strategy=sharding_strategy,
            cpu_offload=cpu_offload,
            state_dict_type=state_dict_type,
            use_orig_params=True,  # frozen base and trainable adapters live in the same FSDP units
            **kwargs,
        )

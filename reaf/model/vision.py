"""The REAF volume encoder: a 3-D ViT with slice/scan hierarchical attention, layer fusion and regional saliency."""

from __future__ import annotations

import dataclasses
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from reaf.model.config import VisionConfig
from reaf.model.layers import LayerFusion, RegionalSaliency, sincos_3d, to_scan, to_slices

_layer_norm = partial(nn.LayerNorm, eps=1e-6)  # timm ViT's norm


class _DenseGrad(torch.autograd.Function):
    """Identity whose backward hands on the gradient in its own dense layout. With one volume per rank the CLS
    token's gradient arrives as a slice of the token gradient, keeping the whole token tensor's strides on its size-1
    dims: a layout DDP's gradient bucket cannot take in place ("Grad strides do not match bucket view strides"), so
    every step would copy it. Part of the forward (not a tensor hook), so it survives copies of the model."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.clone(memory_format=torch.contiguous_format)


class PatchEmbed3d(nn.Module):
    """Conv3d patch embedding: (B, 1, D, H, W) -> (B, d*h*w, C), tokens in (d, h, w) row-major order.

    The stride equals the kernel, so the convolution is one matrix product of the flattened patches with the
    kernel, computed so: on 2 CPU threads it takes 0.15 s against the Conv3d's 0.30 s at 112x336x336. The weight
    gradient needs the patches, a (B, d*h*w, k) copy of the volume (50 MB at full size): autograd keeps the volume
    instead and cuts them again in the backward. The weights stay a Conv3d's (`proj`), so checkpoints load by key.
    With `conv=True` the Conv3d runs itself: the same numbers up to rounding, faster where the patch copy costs more
    than the product saves (the demo's 32 small volumes a batch: 39 against 83 ms forward and weight gradient;
    bench/results/step_parts.json).
    """

    def __init__(self, patch_size: tuple[int, int, int], width: int, conv: bool = False) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.conv = conv
        self.proj = nn.Conv3d(1, width, kernel_size=patch_size, stride=patch_size)

    def patches(self, volume: Tensor) -> Tensor:
        """(B, 1, D, H, W) -> (B, d*h*w, pd*ph*pw), each patch flattened in the kernel's (pd, ph, pw) order."""
        b, _, depth, height, width = volume.shape
        pd, ph, pw = self.patch_size
        d, h, w = depth // pd, height // ph, width // pw
        return volume.reshape(b, d, pd, h, ph, w, pw).permute(0, 1, 3, 5, 2, 4, 6).reshape(b, d * h * w, -1)

    def forward(self, volume: Tensor) -> Tensor:
        if self.conv:
            return self.proj(volume).flatten(2).transpose(1, 2)  # (B, C, d, h, w) -> (B, d*h*w, C)
        patches = self.patches(volume)
        if torch.is_autocast_enabled(volume.device.type):  # cast here, so the product saves this very tensor
            patches = patches.to(torch.get_autocast_dtype(volume.device.type))
        weight = self.proj.weight.reshape(self.proj.out_channels, -1)
        if not torch.is_grad_enabled() or volume.requires_grad:
            return F.linear(patches, weight, self.proj.bias)
        ptr = patches.data_ptr()

        def pack(saved: Tensor) -> Tensor | tuple[torch.dtype, torch.Size]:
            return (saved.dtype, saved.shape) if saved.data_ptr() == ptr else saved

        def unpack(saved: Tensor | tuple[torch.dtype, torch.Size]) -> Tensor:
            return saved if isinstance(saved, Tensor) else self.patches(volume).to(saved[0]).reshape(saved[1])

        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            return F.linear(patches, weight, self.proj.bias)


class VolumeEncoder(nn.Module):
    """Trunk of the vision tower. State-dict names follow timm's ViT and the reference (`spatial_posemb`)."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid = cfg.grid
        self.levels = ["scan" if i in cfg.scan_blocks else "slice" for i in range(cfg.depth)]
        self.grad_checkpointing = False
        c = cfg.width
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.spatial_posemb = nn.Parameter(sincos_3d(self.grid, c), requires_grad=False)
        self.patch_embed = PatchEmbed3d(cfg.patch_size, c, conv=cfg.patch_embed == "conv")
        dpr = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(c, cfg.num_heads, cfg.mlp_ratio, qkv_bias=True, drop_path=dpr[i], norm_layer=_layer_norm)
            for i in range(cfg.depth)
        )
        for block in self.blocks:  # always F.scaled_dot_product_attention, whatever timm's environment switch says
            block.attn.fused_attn = True
        self.norm = _layer_norm(c)
        self._init_weights()
        if cfg.fusion_saliency:
            self.fusion = nn.ModuleDict({
                "scan": LayerFusion(self.levels.count("scan"), cfg.fusion_method),
                "slice": LayerFusion(self.levels.count("slice"), cfg.fusion_method, grid=self.grid),
            })  # fmt: skip
            self.fusion["slice"].cls_from_first_slab = cfg.reference_compat
            self.saliency = RegionalSaliency(
                self.grid,
                cfg.region_size,
                cfg.top_k,
                cfg.suppression,
                cfg.temperature,
                cfg.reference_compat,
                norm=cfg.saliency_norm,
            )
            # created after the timm-style init, as in the reference: PyTorch's default Linear init
            self.fusion_layer = nn.Linear(2 * c, c)
            # LayerScale on the added vector: at 0 the model starts as the plain hierarchy and learns how much to add
            if cfg.fusion_scale_init is not None:
                self.fusion_scale = nn.Parameter(torch.full((c,), float(cfg.fusion_scale_init)))

    def _init_weights(self) -> None:
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    @property
    def reference_compat(self) -> bool:
        return self.cfg.reference_compat

    def set_reference_compat(self, enabled: bool) -> None:
        """Switch the reference's quirks (12^3 region coverage, CLS saliency slot, slab-0 CLS) on or off; the config
        is replaced, not changed in place, so whoever holds the old one still reads what it said."""
        self.cfg = dataclasses.replace(self.cfg, reference_compat=enabled)
        if self.cfg.fusion_saliency:
            self.saliency.reference_compat = enabled
            self.fusion["slice"].cls_from_first_slab = enabled

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.grad_checkpointing = enabled

    def embed(self, volume: Tensor) -> Tensor:
        """(B, 1, D, H, W) -> (B, 1+N, C): patch tokens plus the frozen position table, CLS prepended."""
        if tuple(volume.shape[2:]) != tuple(self.cfg.img_size):
            raise ValueError(f"volume shape {tuple(volume.shape)} does not match img_size {self.cfg.img_size}")
        x = self.patch_embed(volume) + self.spatial_posemb.reshape(1, -1, self.cfg.width).to(volume.dtype)
        cls = _DenseGrad.apply(self.cls_token).expand(x.shape[0], -1, -1).to(x.dtype)
        return torch.cat([cls, x], dim=1)

    def _run_block(self, i: int, x: Tensor) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(self.blocks[i], x, use_reentrant=False)
        return self.blocks[i](x)

    def _as_scan(self, x: Tensor, level: str) -> Tensor:
        return to_scan(x, self.grid, cls_from_first_slab=self.reference_compat) if level == "slice" else x

    def run_blocks(self, x: Tensor) -> tuple[Tensor, dict[str, list[Tensor]]]:
        """(B, 1+N, C) -> last block output (B, 1+N, C) and each level's block outputs as its blocks gave them: scan
        level (B, 1+N, C), slice level (B*d, 1+h*w, C); `fusion[level]` takes them so and returns scan layout."""
        outputs: dict[str, list[Tensor]] = {"scan": [], "slice": []}
        level = "scan"
        for i, block_level in enumerate(self.levels):
            if block_level != level:
                x = to_slices(x, self.grid) if block_level == "slice" else to_scan(x, self.grid)
                level = block_level
            x = self._run_block(i, x)
            if self.cfg.fusion_saliency:  # the plain hierarchy keeps no per-layer outputs
                outputs[level].append(x)
        last = x if level == "scan" else to_scan(x, self.grid)
        return last, outputs

    def pooled_levels(self, outputs: dict[str, list[Tensor]]) -> dict[str, Tensor]:
        """Per level: fuse its block outputs, score regions, pool its last block -> (B, C)."""
        return {lvl: self.saliency(self.fusion[lvl](outs), self._as_scan(outs[-1], lvl))
                for lvl, outs in outputs.items()}  # fmt: skip

    def forward(self, volume: Tensor) -> Tensor:
        """(B, 1, D, H, W) -> feature (B, C): the enhancer's vector added to every token, the final norm, the pool."""
        last, outputs = self.run_blocks(self.embed(volume))
        if self.cfg.fusion_saliency:
            last = last + self.added_vector(outputs)[:, None, :]
        return self.pool(self.norm(last))

    def pool(self, tokens: Tensor) -> Tensor:
        """Normed (B, 1+N, C) -> (B, C): the CLS token, or the mean / per-channel max over the patch tokens."""
        if self.cfg.global_pool == "token":
            return tokens[:, 0]
        patches = tokens[:, 1:]
        return patches.mean(dim=1) if self.cfg.global_pool == "avg" else patches.amax(dim=1)

    def added_vector(self, outputs: dict[str, list[Tensor]]) -> Tensor:
        """Each level's block outputs -> the (B, C) vector the enhancer adds to every token before the final norm."""
        pooled = self.pooled_levels(outputs)
        if self.cfg.pool_norm:  # parameter-free: no state-dict keys, the pooled vectors enter at unit scale
            pooled = {lvl: F.layer_norm(v, v.shape[-1:], eps=1e-6) for lvl, v in pooled.items()}
        fused = self.fusion_layer(torch.cat([pooled["scan"], pooled["slice"]], dim=-1))
        return fused * self.fusion_scale if self.cfg.fusion_scale_init is not None else fused

    @torch.no_grad()
    def saliency_masks(self, volume: Tensor) -> dict[str, Tensor]:
        """Regions the enhancer keeps, per level: {"scan", "slice"} -> (B, d, h, w) bool."""
        if not self.cfg.fusion_saliency:
            raise ValueError("this model has no saliency enhancer (fusion_saliency is false)")
        _, outputs = self.run_blocks(self.embed(volume))
        return {lvl: self.saliency.token_weights(self.fusion[lvl](outs))[1] for lvl, outs in outputs.items()}


class ProjectionHead(nn.Module):
    """Linear(C -> E, no bias); named `proj` so the reference's `visual.head.proj.weight` maps by key."""

    def __init__(self, width: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(width, embed_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class VisionTower(nn.Module):
    """Volume -> unit-norm embedding: (B, 1, D, H, W) -> (B, E)."""

    def __init__(self, cfg: VisionConfig, embed_dim: int) -> None:
        super().__init__()
        self.trunk = VolumeEncoder(cfg)
        self.head = ProjectionHead(cfg.width, embed_dim)

    def forward(self, volume: Tensor) -> Tensor:
        return F.normalize(self.head(self.trunk(volume)), dim=-1)

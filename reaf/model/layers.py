"""Building blocks of the volume encoder: slice/scan regrouping, 3-D sin-cos positions, layer fusion, regional saliency."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Grid = tuple[int, int, int]


def to_slices(x: Tensor, grid: Grid) -> Tensor:
    """(B, 1+d*h*w, C) scan layout -> (B*d, 1+h*w, C) slice layout; the CLS token is broadcast to every slab."""
    b, _, c = x.shape
    d, h, w = grid
    cls = x[:, :1].unsqueeze(1).expand(b, d, 1, c)
    patches = x[:, 1:].reshape(b, d, h * w, c)
    return torch.cat([cls, patches], dim=2).reshape(b * d, 1 + h * w, c)


def to_scan(x: Tensor, grid: Grid, cls_from_first_slab: bool = False) -> Tensor:
    """(B*d, 1+h*w, C) slice layout -> (B, 1+d*h*w, C) scan layout; the CLS copies are averaged.

    `cls_from_first_slab` reproduces the reference's slice-level fusion, which keeps slab 0's CLS copy.
    """
    bd, n, c = x.shape
    d = grid[0]
    x = x.reshape(bd // d, d, n, c)
    cls = x[:, 0, :1] if cls_from_first_slab else x[:, :, 0].mean(dim=1, keepdim=True)
    return torch.cat([cls, x[:, :, 1:].reshape(bd // d, d * (n - 1), c)], dim=1)


def sincos_1d(positions: int, dim: int) -> Tensor:
    """(positions, dim) table: [sin(p*w_i) | cos(p*w_i)] with w_i = 10000^(-i/(dim/2)), computed in float32."""
    half = dim // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float32) / half)
    angles = torch.arange(positions, dtype=torch.float32)[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_3d(grid: Grid, dim: int) -> Tensor:
    """(1, d, h, w, dim) fixed 3-D sin-cos table, channels laid out [w | h | d], dim/3 each (the reference's init)."""
    d, h, w = grid
    third = dim // 3
    emb_w = sincos_1d(w, third)[None, None, :, :].expand(d, h, w, third)
    emb_h = sincos_1d(h, third)[None, :, None, :].expand(d, h, w, third)
    emb_d = sincos_1d(d, third)[:, None, None, :].expand(d, h, w, third)
    return torch.cat([emb_w, emb_h, emb_d], dim=-1).unsqueeze(0)


class LayerFusion(nn.Module):
    """Fuse the outputs of one level's blocks into one scan-layout map: L x (B, 1+N, C) -> (B, 1+N, C) by `method`.

    With `grid`, the outputs come in slice layout, L x (B*d, 1+h*w, C), as the slice-level blocks give them: they are
    fused as they are and only the fused map is regrouped (`to_scan`, slab 0's CLS copy if `cls_from_first_slab`, as
    the reference fuses its slice level), one copy in place of one per block.
    Fixed weights live in a non-persistent buffer: they move with the module (no host-to-device copy per forward)
    and stay out of the state dict, whose keys remain the reference's.
    """

    def __init__(self, num_layers: int, method: str, grid: Grid | None = None) -> None:
        super().__init__()
        self.method = method
        self.num_layers = num_layers
        self.grid = grid
        self.cls_from_first_slab = False
        if method == "learned":
            self.logits = nn.Parameter(torch.zeros(num_layers))
        elif method != "max":
            self.register_buffer("fixed_weights", self._fixed_weights(num_layers, method), persistent=False)

    @staticmethod
    def _fixed_weights(num_layers: int, method: str) -> Tensor:
        steps = torch.arange(num_layers, dtype=torch.float32)
        if method == "weighted_mean":
            return steps.softmax(0)
        if method == "inverse_weighted_mean":
            return steps.flip(0).softmax(0)
        if method == "mean":
            return torch.full((num_layers,), 1.0 / num_layers)
        raise ValueError(f"unknown fusion method {method!r}")

    def weights(self) -> Tensor:
        """(L,) layer weights summing to 1 (not used by `max`)."""
        if self.method == "learned":
            return self.logits.float().softmax(0)
        if self.method == "max":
            raise ValueError(f"fusion method {self.method!r} has no weights")
        return self.fixed_weights

    def _regroup(self, x: Tensor) -> Tensor:
        return x if self.grid is None else to_scan(x, self.grid, self.cls_from_first_slab)

    def forward(self, outputs: list[Tensor]) -> Tensor:
        if self.method == "max":  # the max of averaged CLS copies is not the average of their max: regroup first
            return torch.stack([self._regroup(out) for out in outputs]).amax(dim=0)
        # a weighted sum commutes with the regroup; summed as the reference does, with no (L, B, 1+N, C) stack
        weights = self.weights().to(outputs[0].dtype)
        fused = outputs[0] * weights[0]
        for out, weight in zip(outputs[1:], weights[1:]):
            fused = fused + out * weight
        return self._regroup(fused)


class RegionalSaliency(nn.Module):
    """3-D Regional Saliency Enhancer: keep the top-k salient sub-blocks, suppress the rest, pool with the weights.

    Token saliency s = ||F||_2 of the fused map; region scores are sums of s over `region` sub-blocks; tokens outside
    the k best regions have their saliency multiplied by `suppression`; softmax(s / temperature) over 1+N tokens
    weights the last block's output into one (B, C) vector.

    `norm="mean"` divides s by the volume's mean patch saliency first, so the weights no longer depend on the scale
    of the features (with raw norms, a randomly initialised trunk's norms of ~10 make softmax(s / 1) near one-hot).
    The kept regions do not change: region sums rank the same under a positive per-volume factor.
    """

    def __init__(
        self,
        grid: Grid,
        region: Grid,
        top_k: int,
        suppression: float,
        temperature: float,
        reference_compat: bool,
        norm: str = "raw",
    ) -> None:
        super().__init__()
        if norm not in ("raw", "mean"):
            raise ValueError(f"saliency norm {norm!r} is not 'raw' or 'mean'")
        self.grid, self.region = grid, region
        self.top_k, self.suppression, self.temperature = top_k, suppression, temperature
        self.reference_compat = reference_compat
        self.norm = norm
        if top_k > math.prod(self.region_grid):
            raise ValueError(f"top_k={top_k} exceeds the {math.prod(self.region_grid)} regions of grid {grid}")

    @property
    def region_grid(self) -> Grid:
        """Regions per axis: the whole grid (edge regions smaller) or, in reference mode, only full regions."""
        if self.reference_compat:
            return tuple(g // r for g, r in zip(self.grid, self.region))  # type: ignore[return-value]
        return tuple(math.ceil(g / r) for g, r in zip(self.grid, self.region))  # type: ignore[return-value]

    def keep_mask(self, token_saliency: Tensor) -> Tensor:
        """(B, d, h, w) saliency -> (B, d, h, w) bool, True inside the top-k regions. No host syncs."""
        b = token_saliency.shape[0]
        rd, rh, rw = self.region_grid
        pd, ph, pw = self.region
        covered = token_saliency[:, : rd * pd, : rh * ph, : rw * pw]
        pad = [0, rw * pw - covered.shape[3], 0, rh * ph - covered.shape[2], 0, rd * pd - covered.shape[1]]
        covered = F.pad(covered, pad)  # zero padding: edge regions sum only their real tokens
        scores = covered.reshape(b, rd, pd, rh, ph, rw, pw).sum(dim=(2, 4, 6)).reshape(b, -1)
        top = scores.topk(self.top_k, dim=1).indices
        keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, top, True).reshape(b, rd, 1, rh, 1, rw, 1)
        keep = keep.expand(b, rd, pd, rh, ph, rw, pw).reshape(b, rd * pd, rh * ph, rw * pw)
        full = torch.zeros(token_saliency.shape, dtype=torch.bool, device=keep.device)
        d, h, w = (min(a, c) for a, c in zip(self.grid, keep.shape[1:]))
        full[:, :d, :h, :w] = keep[:, :d, :h, :w]
        return full

    def token_weights(self, fused: Tensor) -> tuple[Tensor, Tensor]:
        """fused (B, 1+N, C) -> softmax weights (B, 1+N) and the keep mask (B, d, h, w)."""
        b = fused.shape[0]
        norms = fused.float().norm(dim=-1)  # (B, 1+N)
        if self.norm == "mean":
            norms = norms / norms[:, 1:].mean(dim=1, keepdim=True).clamp_min(1e-12)
        patch = norms[:, 1:].reshape(b, *self.grid)
        keep = self.keep_mask(patch)
        scaled = torch.where(keep, patch, patch * self.suppression).reshape(b, -1)
        # the CLS slot: the fused CLS's own norm, never suppressed; the reference put patch (0,0,0)'s raw norm there
        cls = norms[:, 1:2] if self.reference_compat else norms[:, :1]
        weights = (torch.cat([cls, scaled], dim=1) / self.temperature).softmax(dim=1)
        return weights, keep

    def forward(self, fused: Tensor, last: Tensor) -> Tensor:
        """fused, last: (B, 1+N, C) -> pooled (B, C)."""
        weights, _ = self.token_weights(fused)
        return torch.einsum("bn,bnc->bc", weights.to(last.dtype), last)

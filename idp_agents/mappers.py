"""Learned mappers: raw observations (workspace images, panoramic views) to the grids that planners read."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from idp_agents.planner_input import mapped_planner_maps
from idp_envs import arm_geometry as geometry


class AxisPaddedConv(nn.Conv2d):
    """A k x k convolution that pads rows and columns each either circularly (a wrapping angle) or with zeros
    (a radius)."""

    def __init__(self, cin: int, cout: int, circular_rows: bool, circular_cols: bool, kernel: int = 3, stride: int = 1):
        pad = kernel // 2
        super().__init__(
            cin, cout, kernel, stride=stride, padding=(0 if circular_rows else pad, 0 if circular_cols else pad)
        )
        self.circular_pad = (pad if circular_cols else 0, pad if circular_cols else 0) + (
            pad if circular_rows else 0,
        ) * 2

    def forward(self, x: Tensor) -> Tensor:
        if any(self.circular_pad):
            x = F.pad(x, self.circular_pad, mode="circular")
        return super().forward(x)


class AxisPaddedResidualBlock(nn.Module):
    """conv-norm-ReLU-conv-norm plus the input, then ReLU (group norm: predictions do not depend on the batch)."""

    def __init__(self, channels: int, circular_rows: bool, circular_cols: bool):
        super().__init__()
        self.conv1 = AxisPaddedConv(channels, channels, circular_rows, circular_cols)
        self.conv2 = AxisPaddedConv(channels, channels, circular_rows, circular_cols)
        self.norm1 = nn.GroupNorm(min(8, channels), channels)
        self.norm2 = nn.GroupNorm(min(8, channels), channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.norm2(self.conv2(F.relu(self.norm1(self.conv1(x))))))


class ColumnTransform(nn.Module):
    """Re-index the column axis of (B, C, rows, W) features as (B, C', rows, W'): one learned linear map of each
    row's C * W values, shared by all rows. It carries polar radius columns to second-joint columns while
    keeping rows (the first joint's angle) aligned."""

    def __init__(self, cin: int, win: int, cout: int, wout: int):
        super().__init__()
        self.cout, self.wout = cout, wout
        self.linear = nn.Conv1d(cin * win, cout * wout, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.linear(x.permute(0, 1, 3, 2).reshape(b, c * w, h))  # (B, C' W', rows)
        return y.reshape(b, self.cout, self.wout, h).permute(0, 1, 3, 2)


class ArmCSpaceMapper(nn.Module):
    """Residual U-Net from a (96, 96) workspace image of the two-link arm to (n, n) C-space obstacle logits.

    The image is first resampled on a polar grid about the arm's base (4n angles x ``radii`` radii out to the
    arm's reach), where turning every obstacle about the base is a circular shift of rows, exactly as it shifts
    the C-space along its first-joint axis. The encoder halves the angle and radius axes three times (circular
    padding along the angle); column transforms carry the radius axis to the second joint's axis at the
    bottleneck (n/2 rows) and at the n-row skip level; the decoder works on the C-space torus with circular
    padding on both axes. Shifting the polar image by 8 rows (two first-joint bins) shifts the logits by 2 rows.

    ``forward(workspace)`` takes (B, 96, 96) or (B, 1, 96, 96) images (any dtype, 1 = obstacle) and returns
    logits (B, n, n); ``torch.sigmoid`` of them is the predicted C-space occupancy (1 = collision).
    """

    def __init__(self, bins: int = 18, channels: int = 16, blocks: int = 1, radii: int = 24):
        super().__init__()
        for name, value in (("channels", channels), ("blocks", blocks)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(bins, int) or bins < 4 or bins % 2:
            raise ValueError(f"bins must be an even int >= 4 (the bottleneck has bins / 2 rows), got {bins!r}")
        if not isinstance(radii, int) or radii < 8 or radii % 8:
            raise ValueError(f"radii must be a multiple of 8 (three halvings), got {radii!r}")
        self.bins, self.image_size = bins, geometry.IMAGE_SIZE
        self.register_buffer("polar_grid", self._polar_grid(2 * 4 * bins, 2 * radii), persistent=False)
        c = channels

        def stage(ch: int, rows: bool = True, cols: bool = False) -> nn.Sequential:
            return nn.Sequential(*(AxisPaddedResidualBlock(ch, rows, cols) for _ in range(blocks)))

        self.stem = AxisPaddedConv(1, c, True, False)
        self.enc1, self.down1 = stage(c), AxisPaddedConv(c, 2 * c, True, False, stride=2)
        self.enc2, self.down2 = stage(2 * c), AxisPaddedConv(2 * c, 4 * c, True, False, stride=2)
        self.enc3, self.down3 = stage(4 * c), AxisPaddedConv(4 * c, 8 * c, True, False, stride=2)
        self.bottleneck = stage(8 * c, True, False)
        self.to_cspace = ColumnTransform(8 * c, radii // 8, 4 * c, bins // 2)
        self.mid = stage(4 * c, True, True)
        self.skip = ColumnTransform(4 * c, radii // 4, 2 * c, bins)
        self.up = AxisPaddedConv(4 * c, 2 * c, True, True)
        self.dec = nn.Sequential(AxisPaddedConv(4 * c, 2 * c, True, True), nn.ReLU(), stage(2 * c, True, True))
        self.out = nn.Conv2d(2 * c, 1, 1)

    @staticmethod
    def _polar_grid(angles: int, radii: int) -> Tensor:
        """grid_sample coordinates (1, angles, radii, 2) of the polar samples, in the image's [-1, 1] frame."""
        phi = (torch.arange(angles, dtype=torch.float64) - 0.5) * (2 * math.pi / angles)  # 2x2 means land on bins
        rho = (torch.arange(radii, dtype=torch.float64) + 0.5) * (sum(geometry.LINK_LENGTHS) + 0.1) / radii
        x = geometry.BASE[0] + rho[None] * torch.cos(phi[:, None])
        y = geometry.BASE[1] + rho[None] * torch.sin(phi[:, None])
        extent = geometry.WORKSPACE_EXTENT
        grid = torch.stack([x / extent * 2 - 1, (extent - y) / extent * 2 - 1], dim=-1)
        return grid[None].float()

    def polar(self, workspace: Tensor) -> Tensor:
        """(B, 1, 4n, radii) polar image: bilinear samples on a grid twice as fine, averaged 2 x 2."""
        if workspace.dim() == 3:
            workspace = workspace[:, None]
        if workspace.dim() != 4 or workspace.shape[1:] != (1, self.image_size, self.image_size):
            raise ValueError(
                f"workspace must have shape (B, {self.image_size}, {self.image_size}) or (B, 1, ...), "
                f"got {tuple(workspace.shape)}"
            )
        image = workspace.to(self.polar_grid.device, torch.float32)
        grid = self.polar_grid.expand(len(image), -1, -1, -1)
        return F.avg_pool2d(F.grid_sample(image, grid, mode="bilinear", align_corners=False), 2)

    def forward_polar(self, polar: Tensor) -> Tensor:
        """C-space logits (B, n, n) from a polar image (B, 1, 4n, radii)."""
        x1 = self.enc1(self.stem(polar))  # (4n, R)
        x2 = self.enc2(self.down1(x1))  # (2n, R/2)
        x3 = self.enc3(self.down2(x2))  # (n, R/4)
        z = self.mid(self.to_cspace(self.bottleneck(self.down3(x3))))  # (n/2, n/2) on the torus
        up = self.up(F.interpolate(z, scale_factor=2, mode="nearest"))  # (n, n)
        y = self.dec(torch.cat([up, self.skip(x3)], dim=1))
        return self.out(y)[:, 0]

    def forward(self, workspace: Tensor) -> Tensor:
        return self.forward_polar(self.polar(workspace))


def cspace_bce_loss(logits: Tensor, cspace: Tensor, pos_weight: float | None = None) -> Tensor:
    """Mean binary cross-entropy of C-space logits (B, n, n) against the true C-space (1 = collision)."""
    if logits.shape != cspace.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and map {tuple(cspace.shape)} must match: the same shape")
    weight = None if pos_weight is None else torch.tensor(pos_weight, device=logits.device, dtype=logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, cspace.to(logits.dtype), pos_weight=weight)


def cspace_accuracy(logits: Tensor, cspace: Tensor) -> Tensor:
    """Fraction of C-space cells whose thresholded prediction (logit > 0 = collision) matches the truth."""
    if logits.shape != cspace.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and map {tuple(cspace.shape)} must match: the same shape")
    return ((logits > 0) == cspace.bool()).float().mean()


class VisualMapper(nn.Module):
    """Panoramic views to obstacle logits, the visual-navigation mapper of GPPN and the implicit-planning paper.

    Every view goes through one CNN (32 filters 8x8 stride 4, 64 filters 4x4 stride 2, linear to 256, ReLUs); a
    cell's four embeddings are concatenated in the N, W, S, E order, so the head knows which way each looked; two
    3x3 convolutions (64 filters, then 1) over the grid of cells give each cell's obstacle logit.

    ``forward(views)`` takes (B, H, W, 4, S, S, 3) views, uint8 in 0..255 or floats in [0, 1] (S = 32 by
    default), and returns logits (B, H, W); ``torch.sigmoid`` of them is the predicted occupancy (1 = obstacle).
    """

    def __init__(self, view_size: int = 32, embedding: int = 256, hidden: int = 64):
        super().__init__()
        if not isinstance(view_size, int) or view_size < 16:
            raise ValueError(f"view_size must be an int >= 16 (two strided convolutions), got {view_size!r}")
        self.view_size = view_size
        self.view_encoder = nn.Sequential(
            nn.Conv2d(3, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Flatten(),
        )
        side = ((view_size - 8) // 4 + 1 - 4) // 2 + 1
        self.embed = nn.Sequential(nn.Linear(64 * side * side, embedding), nn.ReLU())
        self.head = nn.Sequential(
            nn.Conv2d(4 * embedding, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, 1, 3, padding=1)
        )

    def cell_features(self, views: Tensor) -> Tensor:
        """(B, 4 * embedding, H, W): each cell's four view embeddings, concatenated N, W, S, E."""
        s = self.view_size
        if views.dim() != 7 or views.shape[3:] != (4, s, s, 3):
            raise ValueError(f"views must have shape (B, H, W, 4, {s}, {s}, 3), got {tuple(views.shape)}")
        b, h, w = views.shape[:3]
        device = next(self.parameters()).device
        images = views.to(device).reshape(-1, s, s, 3).permute(0, 3, 1, 2)
        images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        embeddings = self.embed(self.view_encoder(images))  # (B H W 4, E)
        return embeddings.reshape(b, h, w, -1).permute(0, 3, 1, 2)

    def forward(self, views: Tensor) -> Tensor:
        return self.head(self.cell_features(views))[:, 0]

    # the same map loss, accuracy and planner input as every mapper's
    loss = staticmethod(cspace_bce_loss)
    accuracy = staticmethod(cspace_accuracy)
    planner_maps = staticmethod(mapped_planner_maps)


# the registry: the observation key a mapper reads -> a builder from the map's (H, W) shape
MAPPERS: dict[str, Callable[[tuple[int, int]], nn.Module]] = {
    "workspace": lambda shape: ArmCSpaceMapper(bins=int(shape[0])),  # workspace image -> C-space
    "views": lambda shape: VisualMapper(),  # panoramic views of every cell -> maze
}


def mapper_input_key(observation_keys) -> str | None:
    """The observation key a mapper must turn into the map (None when the map itself is observed)."""
    keys = set(observation_keys)
    if "occupancy" in keys:
        return None
    for key in MAPPERS:
        if key in keys:
            return key
    raise ValueError(f"no map and no mapper for observations with keys {sorted(keys)}")


def make_mapper(input_key: str, shape: tuple[int, int]) -> nn.Module:
    """The registered mapper (`MAPPERS`) for an observation key, for maps of ``shape``."""
    if input_key not in MAPPERS:
        raise ValueError(f"no mapper for observation key {input_key!r}; mappers exist for {tuple(MAPPERS)}")
    return MAPPERS[input_key](tuple(shape))

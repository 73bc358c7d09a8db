"""Hungarian matching of per-video queries to video instances."""
import torch
from detectron2.projects.point_rend.point_features import point_sample

from mask2former.modeling.matcher import HungarianMatcher


class VideoHungarianMatcher(HungarianMatcher):
    """:class:`HungarianMatcher` for clips: a query's masks and an instance's masks are (T, H, W);
    the mask costs are taken over the same ``num_points`` random points in every frame, i.e. over
    T x num_points values per mask (one ``torch.rand(1, num_points, 2)`` per clip)."""

    def point_values(self, masks: torch.Tensor, point_coords: torch.Tensor) -> torch.Tensor:
        """Values (N, T * P) of masks (N, T, H, W) at the points (1, P, 2), frame by frame."""
        # point_sample treats the frames as channels: every frame is sampled at the same points.
        coords = point_coords.repeat(masks.shape[0], 1, 1)
        return point_sample(masks, coords, align_corners=False).flatten(1)

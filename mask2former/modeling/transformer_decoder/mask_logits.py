"""Mask logits ``einsum("bqc,bchw->bqhw")`` whose backward only touches the queries that get a gradient.

In training, the set criterion takes the loss of the masks matched to a target only (a few of the
~100 queries per image, at every decoder layer); the other queries' masks reach the loss through
no-grad paths only (the matcher, the attention masks), so their gradient is exactly zero. The
einsum's backward would still multiply the full (Q, H*W) gradient with the pixel embeddings, twice,
per layer: a tenth of the decoder's training time on CPU for products of zeros. This backward
finds the queries whose gradient has a non-zero entry and multiplies only those. Dropping terms
that are exactly zero changes the sums only by their rounding order.

The products themselves (queries x pixels, forward and backward) go through
:func:`~mask2former.modeling.onednn_linear.matmul_nt` on the CPU, which reads the pixel
embeddings in their channels-last layout as they are.
"""
import torch

from ..onednn_linear import MIN_ROWS, matmul_nt, onednn_applies


def _pixels_by_channel(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) as an (N, C, H*W) view, for contiguous and channels-last tensors alike."""
    n, c = t.shape[:2]
    if t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(n, -1, c).transpose(1, 2)
    return t.reshape(n, c, -1)


def mask_product(mask_embed: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
    """``einsum("bqc,bchw->bqhw")`` of query embeddings (N, Q, C) and pixel embeddings (N, C, H, W);
    not differentiable on the oneDNN path (:func:`mask_logits` is, for training)."""
    num_images, num_queries, _ = mask_embed.shape
    height, width = mask_features.shape[-2:]
    if not onednn_applies(mask_embed, mask_features) or height * width < MIN_ROWS:
        return torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
    pixels = _pixels_by_channel(mask_features)
    per_image = [matmul_nt(mask_embed[i], pixels[i].t()) for i in range(num_images)]
    logits = per_image[0][None] if num_images == 1 else torch.stack(per_image)
    return logits.view(num_images, num_queries, height, width)


class _MaskLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mask_embed, mask_features):
        ctx.save_for_backward(mask_embed, mask_features)
        return mask_product(mask_embed, mask_features)

    @staticmethod
    def backward(ctx, grad):
        mask_embed, mask_features = ctx.saved_tensors
        num_images, num_queries, _ = mask_embed.shape
        # Under autocast the forward multiplied in the gradient's (lower) precision: so do the
        # products here, as the einsum's backward would; the results take the inputs' dtypes.
        dtype = grad.dtype
        grad = grad.reshape(num_images, num_queries, -1)
        features = _pixels_by_channel(mask_features)
        # (N, Q): queries with a non-zero (or NaN) gradient entry; a maximum is faster than any().
        live = grad.abs().amax(-1).ne(0)
        grad_embed = torch.zeros_like(mask_embed) if ctx.needs_input_grad[0] else None
        grad_features = torch.empty_like(mask_features) if ctx.needs_input_grad[1] else None
        grad_pixels = None if grad_features is None else _pixels_by_channel(grad_features)
        for i in range(num_images):
            rows = live[i].nonzero().squeeze(1)
            grad_rows = grad[i, rows]  # (n, H*W)
            if grad_embed is not None:
                grad_embed[i, rows] = (grad_rows @ features[i].to(dtype).T).to(grad_embed.dtype)
            if grad_features is not None:
                # (H*W, C) pixel rows, copied into the layout of the features; no query with a
                # gradient: zeros.
                pixel_rows = matmul_nt(grad_rows.t(), mask_embed[i, rows].to(dtype).t())
                grad_pixels[i].copy_(pixel_rows.t())
        return grad_embed, grad_features


def mask_logits(mask_embed: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
    """Mask logits (N, Q, H, W) from query embeddings (N, Q, C) and pixel embeddings (N, C, H, W),
    equal to ``einsum("bqc,bchw->bqhw")``, with the backward described in the module docstring."""
    return _MaskLogits.apply(mask_embed, mask_features)

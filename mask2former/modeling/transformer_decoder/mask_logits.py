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
        rows = [live[i].nonzero().squeeze(1) for i in range(num_images)]
        grad_rows = [grad[i, r] for i, r in enumerate(rows)]  # (n_i, H*W) per image
        grad_embed = grad_features = None
        if ctx.needs_input_grad[0]:
            grad_embed = torch.zeros_like(mask_embed)
            for i, r in enumerate(rows):
                grad_embed[i, r] = matmul_nt(grad_rows[i], features[i].to(dtype)).to(grad_embed.dtype)
        if ctx.needs_input_grad[1]:
            embed_rows = [mask_embed[i, r].to(dtype) for i, r in enumerate(rows)]
            if mask_features.is_contiguous(memory_format=torch.channels_last):
                grad_features = _channels_last_feature_gradient(grad_rows, embed_rows, mask_features)
            else:
                grad_features = torch.empty_like(mask_features)
                grad_pixels = _pixels_by_channel(grad_features)
                for i in range(num_images):
                    # (H*W, C) pixel rows; no query with a gradient: zeros.
                    grad_pixels[i].copy_(matmul_nt(grad_rows[i].t(), embed_rows[i].t()).t())
        return grad_embed, grad_features


def _channels_last_feature_gradient(grad_rows, embed_rows, mask_features):
    """The pixel embeddings' gradient, sum over queries of grad (n_i, H*W) x embedding (n_i, C)
    for every image i, as one product written straight into the channels-last layout.

    The images' pixel rows are stacked (N*H*W rows) and every image's queries get columns of
    their own, zero in the other images' rows: the product (N*H*W, C) is then the gradient in
    channels-last memory, where a product per image would need a copy into place (per image
    and decoder layer, 4 ms for 128x128x256 on the 2-thread CPU; the zero columns cost less).
    Exact zeros add nothing to the sums.
    """
    num_images, channels, height, width = mask_features.shape
    pixels = height * width
    stacked = grad_rows[0].new_zeros(num_images * pixels, sum(g.shape[0] for g in grad_rows))
    column = 0
    for i, g in enumerate(grad_rows):
        stacked[i * pixels : (i + 1) * pixels, column : column + g.shape[0]] = g.t()
        column += g.shape[0]
    product = matmul_nt(stacked, torch.cat(embed_rows).t())
    return product.to(mask_features.dtype).view(num_images, height, width, channels).permute(0, 3, 1, 2)


def mask_logits(mask_embed: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
    """Mask logits (N, Q, H, W) from query embeddings (N, Q, C) and pixel embeddings (N, C, H, W),
    equal to ``einsum("bqc,bchw->bqhw")``, with the backward described in the module docstring."""
    return _MaskLogits.apply(mask_embed, mask_features)

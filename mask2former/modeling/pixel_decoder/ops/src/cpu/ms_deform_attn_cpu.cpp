// CPU kernel of multi-scale deformable attention.
//
// Work is split over (batch, query, head) items with at::parallel_for: an item reads its
// n_levels * n_points bilinear samples of one head's D channels and writes D outputs, so the forward
// pass and the gradients of sampling locations and attention weights need no synchronisation. The
// gradient of `value` is a scatter (many queries hit the same positions); it is computed in a second
// pass split over (batch, head, channel block), whose output slices are disjoint, instead of atomics
// or per-thread copies of grad_value.
//
// Sampling follows grid_sample(align_corners=False, padding_mode="zeros"): location x in [0, 1] maps
// to pixel coordinate x * W - 0.5, and corners outside the map contribute zero.
#include "cpu/ms_deform_attn_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

namespace mask2former {
namespace {

struct Level {
  int64_t height;
  int64_t width;
  int64_t start;
};

std::vector<Level> read_levels(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index) {
  const int64_t* shape = spatial_shapes.data_ptr<int64_t>();
  const int64_t* start = level_start_index.data_ptr<int64_t>();
  std::vector<Level> levels(spatial_shapes.size(0));
  for (size_t l = 0; l < levels.size(); ++l) {
    levels[l] = {shape[2 * l], shape[2 * l + 1], start[l]};
  }
  return levels;
}

struct Sizes {
  int64_t batch, num_values, heads, channels, queries, levels, points;
};

Sizes read_sizes(const at::Tensor& value, const at::Tensor& sampling_loc) {
  return {value.size(0), value.size(1), value.size(2), value.size(3),
          sampling_loc.size(1), sampling_loc.size(3), sampling_loc.size(4)};
}

// One bilinear sample: the positions (in S) of its four corners, -1 for corners outside the map, and
// the fractional offsets from the top-left corner.
template <typename scalar_t>
struct Sample {
  int64_t corner[4];  // top-left, top-right, bottom-left, bottom-right
  scalar_t fx, fy;
};

// False when the sample lies entirely outside the map (then it contributes nothing, and neither do
// its gradients). NaN locations compare false and are treated the same way.
template <typename scalar_t>
inline bool locate(scalar_t loc_x, scalar_t loc_y, const Level& level, Sample<scalar_t>& s) {
  const scalar_t x = loc_x * static_cast<scalar_t>(level.width) - scalar_t(0.5);
  const scalar_t y = loc_y * static_cast<scalar_t>(level.height) - scalar_t(0.5);
  if (!(x > scalar_t(-1) && y > scalar_t(-1) && x < static_cast<scalar_t>(level.width) &&
        y < static_cast<scalar_t>(level.height))) {
    return false;
  }
  const scalar_t x_floor = std::floor(x), y_floor = std::floor(y);
  const int64_t x0 = static_cast<int64_t>(x_floor), y0 = static_cast<int64_t>(y_floor);
  s.fx = x - x_floor;
  s.fy = y - y_floor;
  const bool left = x0 >= 0, right = x0 + 1 < level.width, top = y0 >= 0, bottom = y0 + 1 < level.height;
  const int64_t row0 = level.start + y0 * level.width, row1 = row0 + level.width;
  s.corner[0] = (top && left) ? row0 + x0 : -1;
  s.corner[1] = (top && right) ? row0 + x0 + 1 : -1;
  s.corner[2] = (bottom && left) ? row1 + x0 : -1;
  s.corner[3] = (bottom && right) ? row1 + x0 + 1 : -1;
  return true;
}

// Batches are processed im2col_step images at a time, as upstream's CUDA kernel does.
template <typename F>
void for_each_batch_chunk(int64_t batch, int64_t im2col_step, const F& f) {
  const int64_t step = std::min(batch, im2col_step);
  for (int64_t begin = 0; begin < batch; begin += step) {
    f(begin, std::min(batch, begin + step));
  }
}

// Items per parallel task: enough arithmetic per task (~32k multiply-adds) to amortise scheduling.
int64_t grain_for(const Sizes& z) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, z.levels * z.points * 4 * z.channels));
}

template <typename scalar_t>
void forward_impl(
    const at::Tensor& value,
    const std::vector<Level>& levels,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    at::Tensor& output,
    int64_t im2col_step) {
  const Sizes z = read_sizes(value, sampling_loc);
  const scalar_t* value_ptr = value.data_ptr<scalar_t>();
  const scalar_t* loc_ptr = sampling_loc.data_ptr<scalar_t>();
  const scalar_t* attn_ptr = attn_weight.data_ptr<scalar_t>();
  scalar_t* out_ptr = output.data_ptr<scalar_t>();
  const int64_t samples = z.levels * z.points, position_stride = z.heads * z.channels;
  // Corners outside the map read this row of zeros, so the inner loop has no branches.
  const std::vector<scalar_t> zeros(z.channels, scalar_t(0));

  for_each_batch_chunk(z.batch, im2col_step, [&](int64_t batch_begin, int64_t batch_end) {
    const int64_t first = batch_begin * z.queries * z.heads, last = batch_end * z.queries * z.heads;
    at::parallel_for(first, last, grain_for(z), [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {  // item = (n * Lq + q) * M + m
        const int64_t m = item % z.heads, n = item / (z.queries * z.heads);
        const scalar_t* head_value = value_ptr + n * z.num_values * position_stride + m * z.channels;
        const scalar_t* item_loc = loc_ptr + item * samples * 2;
        const scalar_t* item_attn = attn_ptr + item * samples;
        scalar_t* __restrict__ out = out_ptr + item * z.channels;
        for (int64_t l = 0; l < z.levels; ++l) {
          for (int64_t p = 0; p < z.points; ++p) {
            const int64_t k = l * z.points + p;
            Sample<scalar_t> s;
            if (!locate(item_loc[2 * k], item_loc[2 * k + 1], levels[l], s)) {
              continue;
            }
            const scalar_t a = item_attn[k];
            const scalar_t w0 = a * (1 - s.fy) * (1 - s.fx), w1 = a * (1 - s.fy) * s.fx;
            const scalar_t w2 = a * s.fy * (1 - s.fx), w3 = a * s.fy * s.fx;
            const scalar_t* c[4];
            for (int i = 0; i < 4; ++i) {
              c[i] = s.corner[i] >= 0 ? head_value + s.corner[i] * position_stride : zeros.data();
            }
            const scalar_t* __restrict__ c0 = c[0];
            const scalar_t* __restrict__ c1 = c[1];
            const scalar_t* __restrict__ c2 = c[2];
            const scalar_t* __restrict__ c3 = c[3];
            for (int64_t d = 0; d < z.channels; ++d) {
              out[d] += w0 * c0[d] + w1 * c1[d] + w2 * c2[d] + w3 * c3[d];
            }
          }
        }
      }
    });
  });
}

// Gradients of sampling locations and attention weights, one (n, q, m) item at a time.
template <typename scalar_t>
void backward_locations_impl(
    const at::Tensor& value,
    const std::vector<Level>& levels,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    const at::Tensor& grad_output,
    at::Tensor& grad_loc,
    at::Tensor& grad_attn,
    int64_t im2col_step) {
  const Sizes z = read_sizes(value, sampling_loc);
  const scalar_t* value_ptr = value.data_ptr<scalar_t>();
  const scalar_t* loc_ptr = sampling_loc.data_ptr<scalar_t>();
  const scalar_t* attn_ptr = attn_weight.data_ptr<scalar_t>();
  const scalar_t* grad_out_ptr = grad_output.data_ptr<scalar_t>();
  scalar_t* grad_loc_ptr = grad_loc.data_ptr<scalar_t>();
  scalar_t* grad_attn_ptr = grad_attn.data_ptr<scalar_t>();
  const int64_t samples = z.levels * z.points, position_stride = z.heads * z.channels;
  const std::vector<scalar_t> zeros(z.channels, scalar_t(0));

  for_each_batch_chunk(z.batch, im2col_step, [&](int64_t batch_begin, int64_t batch_end) {
    const int64_t first = batch_begin * z.queries * z.heads, last = batch_end * z.queries * z.heads;
    at::parallel_for(first, last, grain_for(z), [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t m = item % z.heads, n = item / (z.queries * z.heads);
        const scalar_t* head_value = value_ptr + n * z.num_values * position_stride + m * z.channels;
        const scalar_t* item_loc = loc_ptr + item * samples * 2;
        const scalar_t* item_attn = attn_ptr + item * samples;
        const scalar_t* __restrict__ g = grad_out_ptr + item * z.channels;
        scalar_t* item_grad_loc = grad_loc_ptr + item * samples * 2;
        scalar_t* item_grad_attn = grad_attn_ptr + item * samples;
        for (int64_t l = 0; l < z.levels; ++l) {
          for (int64_t p = 0; p < z.points; ++p) {
            const int64_t k = l * z.points + p;
            Sample<scalar_t> s;
            if (!locate(item_loc[2 * k], item_loc[2 * k + 1], levels[l], s)) {
              continue;
            }
            const scalar_t* c[4];
            for (int i = 0; i < 4; ++i) {
              c[i] = s.corner[i] >= 0 ? head_value + s.corner[i] * position_stride : zeros.data();
            }
            const scalar_t* __restrict__ c0 = c[0];
            const scalar_t* __restrict__ c1 = c[1];
            const scalar_t* __restrict__ c2 = c[2];
            const scalar_t* __restrict__ c3 = c[3];
            // <grad_output, corner value> for the four corners
            scalar_t g0 = 0, g1 = 0, g2 = 0, g3 = 0;
            for (int64_t d = 0; d < z.channels; ++d) {
              g0 += g[d] * c0[d];
              g1 += g[d] * c1[d];
              g2 += g[d] * c2[d];
              g3 += g[d] * c3[d];
            }
            const scalar_t fx = s.fx, fy = s.fy, a = item_attn[k];
            item_grad_attn[k] = (1 - fy) * ((1 - fx) * g0 + fx * g1) + fy * ((1 - fx) * g2 + fx * g3);
            // d/dx of the bilinear interpolation, times dx/dloc_x = W (and likewise for y)
            const scalar_t d_x = (1 - fy) * (g1 - g0) + fy * (g3 - g2);
            const scalar_t d_y = (1 - fx) * (g2 - g0) + fx * (g3 - g1);
            item_grad_loc[2 * k] = a * d_x * static_cast<scalar_t>(levels[l].width);
            item_grad_loc[2 * k + 1] = a * d_y * static_cast<scalar_t>(levels[l].height);
          }
        }
      }
    });
  });
}

// Gradient of value: each task owns grad_value[n, :, m, d_begin:d_end] and scatters every query's
// contribution into it.
template <typename scalar_t>
void backward_value_impl(
    const std::vector<Level>& levels,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    const at::Tensor& grad_output,
    at::Tensor& grad_value,
    int64_t im2col_step) {
  const Sizes z = read_sizes(grad_value, sampling_loc);
  const scalar_t* loc_ptr = sampling_loc.data_ptr<scalar_t>();
  const scalar_t* attn_ptr = attn_weight.data_ptr<scalar_t>();
  const scalar_t* grad_out_ptr = grad_output.data_ptr<scalar_t>();
  scalar_t* grad_value_ptr = grad_value.data_ptr<scalar_t>();
  const int64_t samples = z.levels * z.points, position_stride = z.heads * z.channels;

  for_each_batch_chunk(z.batch, im2col_step, [&](int64_t batch_begin, int64_t batch_end) {
    // Split channels when there are fewer (n, m) slices than threads; blocks of at least 16 channels
    // keep tasks on separate cache lines.
    const int64_t slices = (batch_end - batch_begin) * z.heads;
    const int64_t threads = at::get_num_threads();
    int64_t block = z.channels;
    if (slices < threads) {
      const int64_t wanted = (threads + slices - 1) / slices;
      block = std::max<int64_t>(16, ((z.channels + wanted - 1) / wanted + 15) / 16 * 16);
      block = std::min(block, z.channels);
    }
    const int64_t blocks = (z.channels + block - 1) / block;
    at::parallel_for(0, slices * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t slice = task / blocks, d_begin = (task % blocks) * block;
        const int64_t d_end = std::min(z.channels, d_begin + block), width = d_end - d_begin;
        const int64_t n = batch_begin + slice / z.heads, m = slice % z.heads;
        scalar_t* head_grad = grad_value_ptr + n * z.num_values * position_stride + m * z.channels + d_begin;
        for (int64_t q = 0; q < z.queries; ++q) {
          const int64_t item = (n * z.queries + q) * z.heads + m;
          const scalar_t* item_loc = loc_ptr + item * samples * 2;
          const scalar_t* item_attn = attn_ptr + item * samples;
          const scalar_t* __restrict__ g = grad_out_ptr + item * z.channels + d_begin;
          for (int64_t l = 0; l < z.levels; ++l) {
            for (int64_t p = 0; p < z.points; ++p) {
              const int64_t k = l * z.points + p;
              Sample<scalar_t> s;
              if (!locate(item_loc[2 * k], item_loc[2 * k + 1], levels[l], s)) {
                continue;
              }
              const scalar_t a = item_attn[k];
              const scalar_t w[4] = {
                  a * (1 - s.fy) * (1 - s.fx), a * (1 - s.fy) * s.fx, a * s.fy * (1 - s.fx), a * s.fy * s.fx};
              for (int i = 0; i < 4; ++i) {
                if (s.corner[i] < 0) {
                  continue;
                }
                scalar_t* __restrict__ target = head_grad + s.corner[i] * position_stride;
                const scalar_t wi = w[i];
                for (int64_t d = 0; d < width; ++d) {
                  target[d] += wi * g[d];
                }
              }
            }
          }
        }
      }
    });
  });
}

}  // namespace

at::Tensor ms_deform_attn_cpu_forward(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    int64_t im2col_step) {
  const std::vector<Level> levels = read_levels(spatial_shapes, level_start_index);
  at::Tensor output = at::zeros({value.size(0), sampling_loc.size(1), value.size(2) * value.size(3)}, value.options());
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_cpu_forward", [&] {
    forward_impl<scalar_t>(value, levels, sampling_loc, attn_weight, output, im2col_step);
  });
  return output;
}

std::vector<at::Tensor> ms_deform_attn_cpu_backward(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    const at::Tensor& grad_output,
    int64_t im2col_step) {
  const std::vector<Level> levels = read_levels(spatial_shapes, level_start_index);
  at::Tensor grad_value = at::zeros_like(value);
  at::Tensor grad_loc = at::zeros_like(sampling_loc);
  at::Tensor grad_attn = at::zeros_like(attn_weight);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_cpu_backward", [&] {
    backward_locations_impl<scalar_t>(
        value, levels, sampling_loc, attn_weight, grad_output, grad_loc, grad_attn, im2col_step);
    backward_value_impl<scalar_t>(levels, sampling_loc, attn_weight, grad_output, grad_value, im2col_step);
  });
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace mask2former

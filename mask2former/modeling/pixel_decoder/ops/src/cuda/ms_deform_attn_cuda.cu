// CUDA kernel of multi-scale deformable attention.
//
// One thread per output element (n, q, m, d): consecutive threads handle consecutive channels of
// the same sample, so reads of `value` are coalesced. Sampling follows grid_sample(align_corners=False,
// padding_mode="zeros"), exactly as the CPU kernel (../cpu/ms_deform_attn_cpu.cpp).
//
// Backward: grad_value is scattered with atomic adds. The gradients of sampling locations and attention
// weights are sums over the D channels of a sample; when D is a power of two up to the warp size, the
// D threads of a sample sit in one warp and reduce with shuffles (one plain write per sample),
// otherwise every thread adds its share atomically.
#include "cuda/ms_deform_attn_cuda.h"

#include <ATen/Dispatch.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

namespace mask2former {
namespace {

constexpr int kThreadsPerBlock = 256;  // a multiple of the warp size (the shuffle reduction needs it)
constexpr int kWarpSize = 32;

struct Dims {
  int64_t num_values, heads, channels, queries, levels, points;
};

template <typename scalar_t>
struct Sample {
  int64_t corner[4];  // position in S of the top-left, top-right, bottom-left, bottom-right corner; -1 outside
  scalar_t fx, fy;
};

// The PyTorch path's pixel coordinate of `loc` along a side of `size` pixels, rounded the same way:
// it samples at grid value g = 2 * loc - 1, and CUDA grid_sample computes ((g + 1) * size - 1) / 2,
// whose multiply and subtract nvcc fuses into one FMA (its default); halving is exact, so that is
// fma(g + 1, size / 2, -0.5). At initialisation sampling locations sit exactly on pixel centres, where
// the last bit decides which one-sided gradient a location gets.
template <typename scalar_t>
__device__ inline scalar_t pixel_coordinate(scalar_t loc, int64_t size) {
  return fma((2 * loc - 1) + 1, static_cast<scalar_t>(size) / 2, scalar_t(-0.5));
}

// False when the sample lies entirely outside the map. A coordinate of exactly -1 is inside: its
// value is 0, but like grid_sample it gets the one-sided gradient from the map's first pixel.
template <typename scalar_t>
__device__ inline bool locate(
    scalar_t loc_x, scalar_t loc_y, int64_t height, int64_t width, int64_t start, Sample<scalar_t>& s) {
  const scalar_t x = pixel_coordinate(loc_x, width);
  const scalar_t y = pixel_coordinate(loc_y, height);
  if (!(x >= scalar_t(-1) && y >= scalar_t(-1) && x < static_cast<scalar_t>(width) && y < static_cast<scalar_t>(height))) {
    return false;
  }
  const scalar_t x_floor = floor(x), y_floor = floor(y);
  const int64_t x0 = static_cast<int64_t>(x_floor), y0 = static_cast<int64_t>(y_floor);
  s.fx = x - x_floor;
  s.fy = y - y_floor;
  const bool left = x0 >= 0, right = x0 + 1 < width, top = y0 >= 0, bottom = y0 + 1 < height;
  const int64_t row0 = start + y0 * width, row1 = row0 + width;
  s.corner[0] = (top && left) ? row0 + x0 : -1;
  s.corner[1] = (top && right) ? row0 + x0 + 1 : -1;
  s.corner[2] = (bottom && left) ? row1 + x0 : -1;
  s.corner[3] = (bottom && right) ? row1 + x0 + 1 : -1;
  return true;
}

// first_item: index of the chunk's first (n, q, m) item; count: threads in the chunk (items * D).
template <typename scalar_t>
__global__ void forward_kernel(
    int64_t first_item,
    int64_t count,
    Dims z,
    const scalar_t* __restrict__ value,
    const int64_t* __restrict__ spatial_shapes,
    const int64_t* __restrict__ level_start_index,
    const scalar_t* __restrict__ sampling_loc,
    const scalar_t* __restrict__ attn_weight,
    scalar_t* __restrict__ output) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= count) {
    return;
  }
  const int64_t d = index % z.channels, item = first_item + index / z.channels;
  const int64_t m = item % z.heads, n = item / (z.queries * z.heads);
  const int64_t samples = z.levels * z.points, position_stride = z.heads * z.channels;
  const scalar_t* head_value = value + n * z.num_values * position_stride + m * z.channels + d;
  const scalar_t* item_loc = sampling_loc + item * samples * 2;
  const scalar_t* item_attn = attn_weight + item * samples;
  scalar_t acc = 0;
  for (int64_t l = 0; l < z.levels; ++l) {
    const int64_t height = spatial_shapes[2 * l], width = spatial_shapes[2 * l + 1], start = level_start_index[l];
    for (int64_t p = 0; p < z.points; ++p) {
      const int64_t k = l * z.points + p;
      Sample<scalar_t> s;
      if (!locate(item_loc[2 * k], item_loc[2 * k + 1], height, width, start, s)) {
        continue;
      }
      const scalar_t w[4] = {(1 - s.fy) * (1 - s.fx), (1 - s.fy) * s.fx, s.fy * (1 - s.fx), s.fy * s.fx};
      scalar_t sampled = 0;
      for (int i = 0; i < 4; ++i) {
        if (s.corner[i] >= 0) {
          sampled += w[i] * head_value[s.corner[i] * position_stride];
        }
      }
      acc += item_attn[k] * sampled;
    }
  }
  output[item * z.channels + d] = acc;
}

template <typename scalar_t>
__global__ void backward_kernel(
    int64_t first_item,
    int64_t count,
    Dims z,
    bool warp_reduce,
    const scalar_t* __restrict__ value,
    const int64_t* __restrict__ spatial_shapes,
    const int64_t* __restrict__ level_start_index,
    const scalar_t* __restrict__ sampling_loc,
    const scalar_t* __restrict__ attn_weight,
    const scalar_t* __restrict__ grad_output,
    scalar_t* __restrict__ grad_value,
    scalar_t* __restrict__ grad_loc,
    scalar_t* __restrict__ grad_attn) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  // With warp_reduce, threads past the end still take part in the shuffles (contributing zeros).
  const bool active = index < count;
  if (!active && !warp_reduce) {
    return;
  }
  const int64_t d = active ? index % z.channels : 0;
  const int64_t item = active ? first_item + index / z.channels : first_item;
  const int64_t m = item % z.heads, n = item / (z.queries * z.heads);
  const int64_t samples = z.levels * z.points, position_stride = z.heads * z.channels;
  const int64_t head_offset = n * z.num_values * position_stride + m * z.channels + d;
  const scalar_t* item_loc = sampling_loc + item * samples * 2;
  const scalar_t* item_attn = attn_weight + item * samples;
  const scalar_t g = active ? grad_output[item * z.channels + d] : scalar_t(0);
  for (int64_t l = 0; l < z.levels; ++l) {
    const int64_t height = spatial_shapes[2 * l], width = spatial_shapes[2 * l + 1], start = level_start_index[l];
    for (int64_t p = 0; p < z.points; ++p) {
      const int64_t k = l * z.points + p;
      const scalar_t a = item_attn[k];
      scalar_t part_attn = 0, part_x = 0, part_y = 0;
      Sample<scalar_t> s;
      if (active && locate(item_loc[2 * k], item_loc[2 * k + 1], height, width, start, s)) {
        const scalar_t w[4] = {(1 - s.fy) * (1 - s.fx), (1 - s.fy) * s.fx, s.fy * (1 - s.fx), s.fy * s.fx};
        scalar_t v[4];
        for (int i = 0; i < 4; ++i) {
          v[i] = 0;
          if (s.corner[i] >= 0) {
            const int64_t offset = head_offset + s.corner[i] * position_stride;
            v[i] = value[offset];
            gpuAtomicAdd(grad_value + offset, a * w[i] * g);
          }
        }
        part_attn = g * (w[0] * v[0] + w[1] * v[1] + w[2] * v[2] + w[3] * v[3]);
        part_x = g * a * static_cast<scalar_t>(width) * ((1 - s.fy) * (v[1] - v[0]) + s.fy * (v[3] - v[2]));
        part_y = g * a * static_cast<scalar_t>(height) * ((1 - s.fx) * (v[2] - v[0]) + s.fx * (v[3] - v[1]));
      }
      const int64_t out = item * samples + k;
      if (warp_reduce) {
        for (int offset = static_cast<int>(z.channels) / 2; offset > 0; offset /= 2) {
          part_attn += __shfl_xor_sync(0xffffffffu, part_attn, offset);
          part_x += __shfl_xor_sync(0xffffffffu, part_x, offset);
          part_y += __shfl_xor_sync(0xffffffffu, part_y, offset);
        }
        if (active && d == 0) {
          grad_attn[out] = part_attn;
          grad_loc[2 * out] = part_x;
          grad_loc[2 * out + 1] = part_y;
        }
      } else {
        gpuAtomicAdd(grad_attn + out, part_attn);
        gpuAtomicAdd(grad_loc + 2 * out, part_x);
        gpuAtomicAdd(grad_loc + 2 * out + 1, part_y);
      }
    }
  }
}

Dims read_dims(const at::Tensor& value, const at::Tensor& sampling_loc) {
  return {value.size(1), value.size(2), value.size(3), sampling_loc.size(1), sampling_loc.size(3), sampling_loc.size(4)};
}

int blocks_for(int64_t count) {
  return static_cast<int>((count + kThreadsPerBlock - 1) / kThreadsPerBlock);
}

// Calls f(first_item, item_count) for each chunk of im2col_step images, as upstream does.
template <typename F>
void for_each_batch_chunk(int64_t batch, int64_t items_per_image, int64_t im2col_step, const F& f) {
  const int64_t step = std::min(batch, im2col_step);
  for (int64_t begin = 0; begin < batch; begin += step) {
    const int64_t end = std::min(batch, begin + step);
    f(begin * items_per_image, (end - begin) * items_per_image);
  }
}

}  // namespace

at::Tensor ms_deform_attn_cuda_forward(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    int64_t im2col_step) {
  const c10::cuda::CUDAGuard device_guard(value.device());
  const Dims z = read_dims(value, sampling_loc);
  const int64_t batch = value.size(0);
  at::Tensor output = at::zeros({batch, z.queries, z.heads * z.channels}, value.options());
  if (output.numel() == 0) {
    return output;
  }
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_cuda_forward", [&] {
    for_each_batch_chunk(batch, z.queries * z.heads, im2col_step, [&](int64_t first_item, int64_t items) {
      const int64_t count = items * z.channels;
      forward_kernel<scalar_t><<<blocks_for(count), kThreadsPerBlock, 0, stream>>>(
          first_item, count, z, value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(),
          level_start_index.data_ptr<int64_t>(), sampling_loc.data_ptr<scalar_t>(), attn_weight.data_ptr<scalar_t>(),
          output.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return output;
}

std::vector<at::Tensor> ms_deform_attn_cuda_backward(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    const at::Tensor& grad_output,
    int64_t im2col_step) {
  const c10::cuda::CUDAGuard device_guard(value.device());
  const Dims z = read_dims(value, sampling_loc);
  const int64_t batch = value.size(0);
  at::Tensor grad_value = at::zeros_like(value);
  at::Tensor grad_loc = at::zeros_like(sampling_loc);
  at::Tensor grad_attn = at::zeros_like(attn_weight);
  if (grad_output.numel() == 0) {
    return {grad_value, grad_loc, grad_attn};
  }
  // A sample's D threads share a warp when D is a power of two no larger than the warp (chunks start
  // at multiples of D threads, and blocks at multiples of the warp size).
  const bool warp_reduce = z.channels <= kWarpSize && (z.channels & (z.channels - 1)) == 0;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_cuda_backward", [&] {
    for_each_batch_chunk(batch, z.queries * z.heads, im2col_step, [&](int64_t first_item, int64_t items) {
      const int64_t count = items * z.channels;
      backward_kernel<scalar_t><<<blocks_for(count), kThreadsPerBlock, 0, stream>>>(
          first_item, count, z, warp_reduce, value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(),
          level_start_index.data_ptr<int64_t>(), sampling_loc.data_ptr<scalar_t>(), attn_weight.data_ptr<scalar_t>(),
          grad_output.data_ptr<scalar_t>(), grad_value.data_ptr<scalar_t>(), grad_loc.data_ptr<scalar_t>(),
          grad_attn.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace mask2former

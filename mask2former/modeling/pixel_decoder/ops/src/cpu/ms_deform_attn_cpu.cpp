// CPU kernel of multi-scale deformable attention: the loops are in ms_deform_attn_cpu_kernels.h;
// this file compiles them for the baseline x86-64 instruction set and, with GCC on x86, a second time
// for AVX2+FMA (about twice as fast), and picks the best one the CPU supports at run time. That keeps
// one binary correct on any x86-64 CPU without building with -march=native.
#include "cpu/ms_deform_attn_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MSDA_CPU_HAS_AVX2_VARIANT 1
#else
#define MSDA_CPU_HAS_AVX2_VARIANT 0
#endif

namespace mask2former {
namespace {

struct Level {
  int64_t height;
  int64_t width;
  int64_t start;
};

struct Problem {
  int64_t batch, num_values, heads, channels, queries, levels, points;
  bool fused_coordinates;  // see pixel_coordinates in ms_deform_attn_cpu_kernels.h
};

// Returns v rounded to its type at this point: the empty asm claims to change v in its register, so
// the compiler cannot fuse the multiplication that produced v with a following addition into an FMA
// (GCC does that by default when FMA is available), which would round differently.
template <typename scalar_t>
inline scalar_t rounded_here(scalar_t v) {
#if defined(__GNUC__) && defined(__x86_64__)
  asm("" : "+x"(v));
#elif defined(__GNUC__) && defined(__aarch64__)
  asm("" : "+w"(v));
#else
  volatile scalar_t opaque = v;
  v = opaque;
#endif
  return v;
}

// Batches are processed im2col_step images at a time, as upstream's CUDA kernel does.
template <typename F>
void for_each_batch_chunk(int64_t batch, int64_t im2col_step, const F& f) {
  const int64_t step = std::min(batch, im2col_step);
  for (int64_t begin = 0; begin < batch; begin += step) {
    f(begin, std::min(batch, begin + step));
  }
}

// 32-byte SIMD vectors (GCC/Clang vector extension): one AVX register, or two SSE registers in
// the baseline build. Never passed or returned by value, which would depend on the ABI in use.
template <typename scalar_t>
struct Simd;
template <>
struct Simd<float> {
  typedef float Vec __attribute__((vector_size(32)));
  static constexpr int kLanes = 8;
  static inline void load(Vec& v, const float* p) {
    std::memcpy(&v, p, sizeof(Vec));
  }
  static inline void store(float* p, const Vec& v) {
    std::memcpy(p, &v, sizeof(Vec));
  }
  // Sum of the lanes: the two 16-byte halves first (one vector add), then the 4 lanes left.
  static inline float sum(const Vec& v) {
    typedef float Half __attribute__((vector_size(16)));
    Half low, high;
    std::memcpy(&low, &v, sizeof(Half));
    std::memcpy(&high, reinterpret_cast<const char*>(&v) + sizeof(Half), sizeof(Half));
    const Half h = low + high;
    return h[0] + h[1] + h[2] + h[3];
  }
};
template <>
struct Simd<double> {
  typedef double Vec __attribute__((vector_size(32)));
  static constexpr int kLanes = 4;
  static inline void load(Vec& v, const double* p) {
    std::memcpy(&v, p, sizeof(Vec));
  }
  static inline void store(double* p, const Vec& v) {
    std::memcpy(p, &v, sizeof(Vec));
  }
  // Sum of the lanes: the two 16-byte halves first (one vector add), then the 2 lanes left.
  static inline double sum(const Vec& v) {
    typedef double Half __attribute__((vector_size(16)));
    Half low, high;
    std::memcpy(&low, &v, sizeof(Half));
    std::memcpy(&high, reinterpret_cast<const char*>(&v) + sizeof(Half), sizeof(Half));
    const Half h = low + high;
    return h[0] + h[1];
  }
};

// Items per parallel task: enough arithmetic per task (~32k multiply-adds) to amortise scheduling.
int64_t grain_for(const Problem& z) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, z.levels * z.points * 4 * z.channels));
}

// Channels per grad_value task: all of them, unless there are fewer (batch, head) slices than
// threads; blocks of at least 16 channels keep tasks on separate cache lines.
int64_t channel_block(const Problem& z, int64_t slices) {
  const int64_t threads = at::get_num_threads();
  if (slices >= threads) {
    return z.channels;
  }
  const int64_t wanted = (threads + slices - 1) / slices;
  const int64_t block = std::max<int64_t>(16, ((z.channels + wanted - 1) / wanted + 15) / 16 * 16);
  return std::min(block, z.channels);
}

}  // namespace

#define MSDA_CPU_ISA baseline
#include "cpu/ms_deform_attn_cpu_kernels.h"
#undef MSDA_CPU_ISA

#if MSDA_CPU_HAS_AVX2_VARIANT
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define MSDA_CPU_ISA avx2
#include "cpu/ms_deform_attn_cpu_kernels.h"
#undef MSDA_CPU_ISA
#pragma GCC pop_options
#endif

namespace {

bool cpu_supports_avx2() {
#if MSDA_CPU_HAS_AVX2_VARIANT
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported;
#else
  return false;
#endif
}

// Tests force the baseline variant to check it on machines that would pick AVX2.
std::atomic<bool> baseline_forced{false};

bool cpu_has_avx2() {
  return cpu_supports_avx2() && !baseline_forced.load();
}

std::vector<Level> read_levels(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index) {
  const int64_t* shape = spatial_shapes.data_ptr<int64_t>();
  const int64_t* start = level_start_index.data_ptr<int64_t>();
  std::vector<Level> levels(spatial_shapes.size(0));
  for (size_t l = 0; l < levels.size(); ++l) {
    levels[l] = {shape[2 * l], shape[2 * l + 1], start[l]};
  }
  return levels;
}

// Whether grid_sample on CPU computes its pixel coordinate (g + 1) * (size / 2) - 0.5 with a fused
// multiply-add. PyTorch's vectorised grid_sample kernels are compiled per instruction set: its AVX2
// and AVX512 builds fuse, its baseline build does not, and which one runs depends on the CPU and on
// ATEN_CPU_CAPABILITY. So ask grid_sample itself, once per dtype: sample a one-row map holding 1 at
// column floor(x) + 1 and 0 elsewhere at a grid value where the two roundings of x differ; the
// result is exactly the fractional part of grid_sample's x.
template <typename scalar_t>
bool probe_grid_sample_fuses_coordinates() {
  constexpr int64_t kWidth = 5;
  const scalar_t half_width = static_cast<scalar_t>(kWidth) / 2;
  // Just above g + 1 = 1.6 the product (g + 1) * 2.5 is just above 4 and x just above 3.5, where a
  // float's spacing halves: rounding the product first loses the last bit that the FMA keeps.
  scalar_t shifted = scalar_t(1.6), fused = 0, separate = 0;
  for (int step = 0; step < 64; ++step, shifted = std::nextafter(shifted, scalar_t(2))) {
    fused = std::fma(shifted, half_width, scalar_t(-0.5));
    separate = rounded_here(shifted * half_width) - scalar_t(0.5);
    if (fused != separate && std::floor(fused) == std::floor(separate)) {
      break;
    }
  }
  const int64_t column = static_cast<int64_t>(std::floor(fused)) + 1;
  TORCH_INTERNAL_ASSERT(fused != separate && column < kWidth, "no grid value tells the two roundings apart");
  const scalar_t grid_x = shifted - 1;  // exact (Sterbenz), so grid_sample's g + 1 gives back `shifted`
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value);
  at::Tensor map = at::zeros({1, 1, 1, kWidth}, options);
  map.data_ptr<scalar_t>()[column] = 1;
  // grid y = 0 on a one-row map is pixel row 0 under either rounding, with weight exactly 1.
  at::Tensor grid = at::zeros({1, 1, 1, 2}, options);
  grid.data_ptr<scalar_t>()[0] = grid_x;
  // Autocast must not change the probe's dtype.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const scalar_t weight = at::grid_sampler_2d(map, grid, /*bilinear*/ 0, /*zeros*/ 0, /*align_corners=*/false)
                              .data_ptr<scalar_t>()[0];
  if (weight == fused - std::floor(fused)) {
    return true;
  }
  if (weight != separate - std::floor(separate)) {
    TORCH_WARN_ONCE(
        "ms_deform_attn CPU kernel: grid_sample rounds its pixel coordinates in an unexpected way; the kernel's "
        "gradients at exact pixel centres may pick the other one-sided derivative than the PyTorch path's");
  }
  return false;
}

template <typename scalar_t>
bool grid_sample_fuses_coordinates() {
  static const bool fused = probe_grid_sample_fuses_coordinates<scalar_t>();
  return fused;
}

template <typename scalar_t>
Problem read_problem(const at::Tensor& value, const at::Tensor& sampling_loc) {
  return {value.size(0),        value.size(1),        value.size(2),       value.size(3),
          sampling_loc.size(1), sampling_loc.size(3), sampling_loc.size(4), grid_sample_fuses_coordinates<scalar_t>()};
}

}  // namespace

std::string cpu_kernel_isa() {
  return cpu_has_avx2() ? "avx2+fma" : "baseline";
}

void set_cpu_kernel_isa(const std::string& isa) {
  TORCH_CHECK(
      isa == "auto" || isa == "baseline" || (isa == "avx2+fma" && cpu_supports_avx2()),
      "set_cpu_kernel_isa: expected \"auto\", \"baseline\"", cpu_supports_avx2() ? " or \"avx2+fma\"" : "",
      " on this machine, got \"", isa, "\"");
  baseline_forced.store(isa == "baseline");
}

at::Tensor ms_deform_attn_cpu_forward(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    int64_t im2col_step) {
  const std::vector<Level> levels = read_levels(spatial_shapes, level_start_index);
  // Every element is written by the kernel (no need to clear the memory first).
  at::Tensor output = at::empty(
      {value.size(0), sampling_loc.size(1), value.size(2) * value.size(3)}, value.options());
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_cpu_forward", [&] {
    const Problem z = read_problem<scalar_t>(value, sampling_loc);
    const auto args = std::make_tuple(
        z, levels.data(), value.data_ptr<scalar_t>(), sampling_loc.data_ptr<scalar_t>(),
        attn_weight.data_ptr<scalar_t>(), output.data_ptr<scalar_t>(), im2col_step);
#if MSDA_CPU_HAS_AVX2_VARIANT
    if (cpu_has_avx2()) {
      std::apply(avx2::forward<scalar_t>, args);
      return;
    }
#endif
    std::apply(baseline::forward<scalar_t>, args);
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
  // grad_value is a scatter target and starts at zero; the other two are written element by element.
  at::Tensor grad_loc = at::empty_like(sampling_loc);
  at::Tensor grad_attn = at::empty_like(attn_weight);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_cpu_backward", [&] {
    const Problem z = read_problem<scalar_t>(value, sampling_loc);
    const auto location_args = std::make_tuple(
        z, levels.data(), value.data_ptr<scalar_t>(), sampling_loc.data_ptr<scalar_t>(),
        attn_weight.data_ptr<scalar_t>(), grad_output.data_ptr<scalar_t>(), grad_loc.data_ptr<scalar_t>(),
        grad_attn.data_ptr<scalar_t>(), im2col_step);
    const auto value_args = std::make_tuple(
        z, levels.data(), sampling_loc.data_ptr<scalar_t>(), attn_weight.data_ptr<scalar_t>(),
        grad_output.data_ptr<scalar_t>(), grad_value.data_ptr<scalar_t>(), im2col_step);
#if MSDA_CPU_HAS_AVX2_VARIANT
    if (cpu_has_avx2()) {
      std::apply(avx2::backward_locations<scalar_t>, location_args);
      std::apply(avx2::backward_value<scalar_t>, value_args);
      return;
    }
#endif
    std::apply(baseline::backward_locations<scalar_t>, location_args);
    std::apply(baseline::backward_value<scalar_t>, value_args);
  });
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace mask2former

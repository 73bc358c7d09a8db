// The loops of the CPU kernel. ms_deform_attn_cpu.cpp includes this file twice, in two namespaces:
// once compiled for the baseline instruction set and once for AVX2+FMA, and picks one at run time.
// Hence no include guard; Level, Problem, Simd, rounded_here, for_each_batch_chunk, grain_for and
// channel_block come from the includer.
//
// Work is split over (batch, query, head) items: an item reads its n_levels * n_points bilinear
// samples of one head's D channels and writes D outputs, so the forward pass and the gradients of
// sampling locations and attention weights need no synchronisation. The gradient of `value` is a
// scatter (many queries hit the same positions); it is computed in a second pass split over (batch,
// head, channel block), whose output slices are disjoint, instead of atomics or per-thread copies.
//
// Sampling follows grid_sample(align_corners=False, padding_mode="zeros"): location x in [0, 1] maps
// to pixel coordinate x * W - 0.5, and corners outside the map contribute zero. The coordinate is
// rounded exactly as the PyTorch path rounds it (see pixel_coordinates): at initialisation the
// sampling locations sit exactly on pixel centres, where the bilinear interpolation has a kink and
// the last bit of the coordinate decides which one-sided gradient a location gets.

namespace MSDA_CPU_ISA {

// One bilinear sample: the positions (in S) of its four corners, -1 for corners outside the map, and
// the fractional offsets from the top-left corner.
template <typename scalar_t>
struct Sample {
  int64_t corner[4];  // top-left, top-right, bottom-left, bottom-right
  scalar_t fx, fy;
};

// Half the level sizes in the order of an item's sampling locations: (W_l / 2, H_l / 2) for each
// level l, repeated for its points.
template <typename scalar_t>
std::vector<scalar_t> half_sizes_of(const Problem& z, const Level* levels) {
  std::vector<scalar_t> half_sizes(z.levels * z.points * 2);
  for (int64_t k = 0; k < z.levels * z.points; ++k) {
    half_sizes[2 * k] = static_cast<scalar_t>(levels[k / z.points].width) / 2;
    half_sizes[2 * k + 1] = static_cast<scalar_t>(levels[k / z.points].height) / 2;
  }
  return half_sizes;
}

// The PyTorch path's pixel coordinates of an item's sampling locations, bit for bit: it turns each
// location into grid_sample's grid value g = 2 * loc - 1 (in scalar_t), and grid_sample computes
// (g + 1) * (size / 2) - 0.5, with the last two operations fused into one FMA or not depending on
// how PyTorch was built for this CPU (`fused`, found by probing grid_sample). 2 * loc is exact, so
// fusing it with the - 1 changes nothing. Computed for all of an item's samples in one loop, which
// vectorises, before any of them is read.
template <typename scalar_t>
inline void pixel_coordinates(
    const scalar_t* __restrict__ item_loc, const scalar_t* __restrict__ half_sizes, int64_t count, bool fused,
    scalar_t* __restrict__ coords) {
  if (fused) {
    for (int64_t i = 0; i < count; ++i) {
      coords[i] = std::fma((2 * item_loc[i] - 1) + 1, half_sizes[i], scalar_t(-0.5));
    }
  } else {
    for (int64_t i = 0; i < count; ++i) {
      coords[i] = rounded_here(((2 * item_loc[i] - 1) + 1) * half_sizes[i]) - scalar_t(0.5);
    }
  }
}

// False when the sample at pixel coordinates (x, y) lies entirely outside the map (then it
// contributes nothing, and neither do its gradients). NaN coordinates compare false and are treated
// the same way. A coordinate of exactly -1 is inside: its value is 0, but like grid_sample it gets
// the one-sided gradient from the map's first pixel.
template <typename scalar_t>
inline bool locate(scalar_t x, scalar_t y, const Level& level, Sample<scalar_t>& s) {
  if (!(x >= scalar_t(-1) && y >= scalar_t(-1) && x < static_cast<scalar_t>(level.width) &&
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

// a times the bilinear weights of the four corners, the weights rounded as grid_sample rounds them.
template <typename scalar_t>
inline void attention_times_corner_weights(
    scalar_t a, const Sample<scalar_t>& s, scalar_t& w0, scalar_t& w1, scalar_t& w2, scalar_t& w3) {
  const scalar_t east = 1 - s.fx, south = 1 - s.fy;
  w0 = a * (south * east);
  w1 = a * (south * s.fx);
  w2 = a * (s.fy * east);
  w3 = a * (s.fy * s.fx);
}

// Channel rows of the four corners; corners outside the map read a row of zeros, so the channel
// loops need no branches.
template <typename scalar_t>
inline void corner_rows(
    const Sample<scalar_t>& s, const scalar_t* head_value, int64_t position_stride, const scalar_t* zeros,
    const scalar_t* rows[4]) {
  for (int i = 0; i < 4; ++i) {
    rows[i] = s.corner[i] >= 0 ? head_value + s.corner[i] * position_stride : zeros;
  }
}

template <typename scalar_t>
void forward(
    const Problem& z, const Level* levels, const scalar_t* value, const scalar_t* sampling_loc,
    const scalar_t* attn_weight, scalar_t* output, int64_t im2col_step) {
  const int64_t samples = z.levels * z.points, position_stride = z.heads * z.channels;
  const std::vector<scalar_t> zeros(z.channels, scalar_t(0));
  const std::vector<scalar_t> half_sizes = half_sizes_of<scalar_t>(z, levels);
  for_each_batch_chunk(z.batch, im2col_step, [&](int64_t batch_begin, int64_t batch_end) {
    const int64_t first = batch_begin * z.queries * z.heads, last = batch_end * z.queries * z.heads;
    at::parallel_for(first, last, grain_for(z), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> coords(samples * 2);
      for (int64_t item = begin; item < end; ++item) {  // item = (n * Lq + q) * M + m
        const int64_t m = item % z.heads, n = item / (z.queries * z.heads);
        const scalar_t* head_value = value + n * z.num_values * position_stride + m * z.channels;
        pixel_coordinates(
            sampling_loc + item * samples * 2, half_sizes.data(), samples * 2, z.fused_coordinates, coords.data());
        const scalar_t* item_attn = attn_weight + item * samples;
        scalar_t* __restrict__ out = output + item * z.channels;
        std::fill(out, out + z.channels, scalar_t(0));
        for (int64_t l = 0; l < z.levels; ++l) {
          for (int64_t p = 0; p < z.points; ++p) {
            const int64_t k = l * z.points + p;
            Sample<scalar_t> s;
            if (!locate(coords[2 * k], coords[2 * k + 1], levels[l], s)) {
              continue;
            }
            scalar_t w0, w1, w2, w3;
            attention_times_corner_weights(item_attn[k], s, w0, w1, w2, w3);
            const scalar_t* rows[4];
            corner_rows(s, head_value, position_stride, zeros.data(), rows);
            const scalar_t* __restrict__ c0 = rows[0];
            const scalar_t* __restrict__ c1 = rows[1];
            const scalar_t* __restrict__ c2 = rows[2];
            const scalar_t* __restrict__ c3 = rows[3];
            for (int64_t d = 0; d < z.channels; ++d) {
              out[d] += w0 * c0[d] + w1 * c1[d] + w2 * c2[d] + w3 * c3[d];
            }
          }
        }
      }
    });
  });
}

// The samples of one (n, q, m) item that touch the map, gathered before any channel is read: the
// rows of their four corners (a row of zeros for corners outside the map) and the fractional
// offsets, with the rows prefetched so that the latency of these scattered reads overlaps. (This
// helps the backward pass; the forward pass measured faster reading each sample as it is located.)
template <typename scalar_t>
struct ItemSamples {
  static constexpr int kMax = 64;  // more samples per item are gathered in several rounds
  int count = 0;
  int64_t index[kMax];  // l * n_points + p
  const scalar_t* rows[kMax][4];
  scalar_t fx[kMax], fy[kMax];

  // Gathers samples [first, last) (at most kMax) of the item; returns how many touch the map.
  int gather(
      int64_t first, int64_t last, const Problem& z, const Level* levels, const scalar_t* coords,
      const scalar_t* head_value, int64_t position_stride, const scalar_t* zeros) {
    count = 0;
    for (int64_t k = first; k < last; ++k) {
      Sample<scalar_t> s;
      if (!locate(coords[2 * k], coords[2 * k + 1], levels[k / z.points], s)) {
        continue;
      }
      corner_rows(s, head_value, position_stride, zeros, rows[count]);
      for (int i = 0; i < 4; ++i) {
        __builtin_prefetch(rows[count][i]);
        __builtin_prefetch(rows[count][i] + z.channels - 1);
      }
      index[count] = k;
      fx[count] = s.fx;
      fy[count] = s.fy;
      ++count;
    }
    return count;
  }
};

// <g, c_i> for the four corner rows. The sums run in SIMD registers (a compiler may not reorder a
// floating-point sum by itself), then across lanes.
template <typename scalar_t>
inline void corner_dots(const scalar_t* g, const scalar_t* const rows[4], int64_t channels, scalar_t dots[4]) {
  using Vec = typename Simd<scalar_t>::Vec;
  constexpr int kLanes = Simd<scalar_t>::kLanes;
  Vec acc[4] = {};
  int64_t d = 0;
  for (; d + kLanes <= channels; d += kLanes) {
    Vec gv, cv;
    Simd<scalar_t>::load(gv, g + d);
    for (int i = 0; i < 4; ++i) {
      Simd<scalar_t>::load(cv, rows[i] + d);
      acc[i] += gv * cv;
    }
  }
  for (int i = 0; i < 4; ++i) {
    scalar_t sum = Simd<scalar_t>::sum(acc[i]);
    for (int64_t e = d; e < channels; ++e) {
      sum += g[e] * rows[i][e];
    }
    dots[i] = sum;
  }
}

// Gradients of sampling locations and attention weights, one (n, q, m) item at a time.
template <typename scalar_t>
void backward_locations(
    const Problem& z, const Level* levels, const scalar_t* value, const scalar_t* sampling_loc,
    const scalar_t* attn_weight, const scalar_t* grad_output, scalar_t* grad_loc, scalar_t* grad_attn,
    int64_t im2col_step) {
  const int64_t samples = z.levels * z.points, position_stride = z.heads * z.channels;
  const std::vector<scalar_t> zeros(z.channels, scalar_t(0));
  const std::vector<scalar_t> half_sizes = half_sizes_of<scalar_t>(z, levels);
  for_each_batch_chunk(z.batch, im2col_step, [&](int64_t batch_begin, int64_t batch_end) {
    const int64_t first = batch_begin * z.queries * z.heads, last = batch_end * z.queries * z.heads;
    at::parallel_for(first, last, grain_for(z), [&](int64_t begin, int64_t end) {
      ItemSamples<scalar_t> gathered;
      std::vector<scalar_t> coords(samples * 2);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t m = item % z.heads, n = item / (z.queries * z.heads);
        const scalar_t* head_value = value + n * z.num_values * position_stride + m * z.channels;
        pixel_coordinates(
            sampling_loc + item * samples * 2, half_sizes.data(), samples * 2, z.fused_coordinates, coords.data());
        const scalar_t* item_attn = attn_weight + item * samples;
        const scalar_t* g = grad_output + item * z.channels;
        scalar_t* item_grad_loc = grad_loc + item * samples * 2;
        scalar_t* item_grad_attn = grad_attn + item * samples;
        // Samples outside the map get no gradient.
        std::fill(item_grad_loc, item_grad_loc + samples * 2, scalar_t(0));
        std::fill(item_grad_attn, item_grad_attn + samples, scalar_t(0));
        for (int64_t round = 0; round < samples; round += ItemSamples<scalar_t>::kMax) {
          const int count = gathered.gather(
              round, std::min(samples, round + ItemSamples<scalar_t>::kMax), z, levels, coords.data(), head_value,
              position_stride, zeros.data());
          for (int j = 0; j < count; ++j) {
            scalar_t dots[4];
            corner_dots(g, gathered.rows[j], z.channels, dots);
            const int64_t k = gathered.index[j];
            const scalar_t fx = gathered.fx[j], fy = gathered.fy[j], a = item_attn[k];
            item_grad_attn[k] = (1 - fy) * ((1 - fx) * dots[0] + fx * dots[1]) + fy * ((1 - fx) * dots[2] + fx * dots[3]);
            // d/dx of the bilinear interpolation, times dx/dloc_x = W (and likewise for y)
            const scalar_t d_x = (1 - fy) * (dots[1] - dots[0]) + fy * (dots[3] - dots[2]);
            const scalar_t d_y = (1 - fx) * (dots[2] - dots[0]) + fx * (dots[3] - dots[1]);
            const Level& level = levels[k / z.points];
            item_grad_loc[2 * k] = a * d_x * static_cast<scalar_t>(level.width);
            item_grad_loc[2 * k + 1] = a * d_y * static_cast<scalar_t>(level.height);
          }
        }
      }
    });
  });
}

// Gradient of value: each task owns grad_value[n, :, m, d_begin:d_end] and scatters every query's
// contribution into it.
constexpr int64_t kPrefetchQueries = 4;

template <typename scalar_t>
void backward_value(
    const Problem& z, const Level* levels, const scalar_t* sampling_loc, const scalar_t* attn_weight,
    const scalar_t* grad_output, scalar_t* grad_value, int64_t im2col_step) {
  const int64_t samples = z.levels * z.points, position_stride = z.heads * z.channels;
  const std::vector<scalar_t> half_sizes = half_sizes_of<scalar_t>(z, levels);
  for_each_batch_chunk(z.batch, im2col_step, [&](int64_t batch_begin, int64_t batch_end) {
    const int64_t slices = (batch_end - batch_begin) * z.heads;
    const int64_t block = channel_block(z, slices);
    const int64_t blocks = (z.channels + block - 1) / block;
    at::parallel_for(0, slices * blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> coords(samples * 2);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t slice = task / blocks, d_begin = (task % blocks) * block;
        const int64_t width = std::min(z.channels, d_begin + block) - d_begin;
        const int64_t n = batch_begin + slice / z.heads, m = slice % z.heads;
        scalar_t* head_grad = grad_value + n * z.num_values * position_stride + m * z.channels + d_begin;
        for (int64_t q = 0; q < z.queries; ++q) {
          const int64_t item = (n * z.queries + q) * z.heads + m;
          const scalar_t* item_loc = sampling_loc + item * samples * 2;
          const scalar_t* item_attn = attn_weight + item * samples;
          const scalar_t* __restrict__ g = grad_output + item * z.channels + d_begin;
          // This loop strides over the other heads' data: fetch a few queries ahead.
          const int64_t ahead = std::min(q + kPrefetchQueries, z.queries - 1) - q;
          const scalar_t* next_loc = item_loc + ahead * z.heads * samples * 2;
          for (int64_t offset = 0; offset < samples * 2; offset += 64 / static_cast<int64_t>(sizeof(scalar_t))) {
            __builtin_prefetch(next_loc + offset);
          }
          __builtin_prefetch(item_attn + ahead * z.heads * samples);
          __builtin_prefetch(g + ahead * z.heads * z.channels);
          pixel_coordinates(item_loc, half_sizes.data(), samples * 2, z.fused_coordinates, coords.data());
          for (int64_t l = 0; l < z.levels; ++l) {
            for (int64_t p = 0; p < z.points; ++p) {
              const int64_t k = l * z.points + p;
              Sample<scalar_t> s;
              if (!locate(coords[2 * k], coords[2 * k + 1], levels[l], s)) {
                continue;
              }
              scalar_t w[4];
              attention_times_corner_weights(item_attn[k], s, w[0], w[1], w[2], w[3]);
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

}  // namespace MSDA_CPU_ISA

// Device helpers of the CUDA kernels: 16-byte packs, the noise of a run of stream indices, reductions.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>

#include <cstdint>

#include "../philox.h"

namespace fastscore {
namespace cuda {

constexpr int kThreads = 256;

// Elements per thread: one 16-byte access (4 float32, 8 bfloat16/float16, 2 float64).
template <typename scalar_t>
struct Vec {
  static constexpr int size = 16 / sizeof(scalar_t);
};

template <typename scalar_t>
struct alignas(16) Pack {
  scalar_t v[Vec<scalar_t>::size];
};

template <typename scalar_t>
__device__ __forceinline__ Pack<scalar_t> load_pack(const scalar_t* p) {
  return *reinterpret_cast<const Pack<scalar_t>*>(p);
}

template <typename scalar_t>
__device__ __forceinline__ void store_pack(scalar_t* p, const Pack<scalar_t>& pack) {
  *reinterpret_cast<Pack<scalar_t>*>(p) = pack;
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// z[v] = normal(seed, j0 + v) for v < K, computing each Philox block once.
template <int K>
__device__ __forceinline__ void noise_run(uint64_t seed, uint64_t j0, float (&z)[K]) {
  if (K % 4 == 0 && (j0 & 3) == 0) {  // the run starts a block: whole blocks, static lanes
#pragma unroll
    for (int b = 0; b < K / 4; ++b) {
      const Normal4 n = normal_block(seed, (j0 >> 2) + b);
#pragma unroll
      for (int l = 0; l < 4; ++l) z[4 * b + l] = n.v[l];
    }
    return;
  }
  uint64_t block = j0 >> 2;
  int lane = static_cast<int>(j0 & 3);
  Normal4 n = normal_block(seed, block);
#pragma unroll
  for (int v = 0; v < K; ++v) {
    if (lane == 4) {
      n = normal_block(seed, ++block);
      lane = 0;
    }
    z[v] = lane == 0 ? n.v[0] : lane == 1 ? n.v[1] : lane == 2 ? n.v[2] : n.v[3];
    ++lane;
  }
}

__device__ __forceinline__ float normal_at(uint64_t seed, uint64_t j) {
  const Normal4 n = normal_block(seed, j >> 2);
  const int lane = static_cast<int>(j & 3);
  return lane == 0 ? n.v[0] : lane == 1 ? n.v[1] : lane == 2 ? n.v[2] : n.v[3];
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  __shared__ T partial[32];
  __shared__ T total;
  v = warp_sum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // partial/total may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T w = lane < static_cast<int>(blockDim.x / 32) ? partial[lane] : T(0);
    w = warp_sum(w);
    if (lane == 0) total = w;
  }
  __syncthreads();
  return total;
}

inline unsigned grid_for(int64_t work_items, int threads = kThreads) {
  const int64_t blocks = (work_items + threads - 1) / threads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(blocks, int64_t(1) << 20)));
}

}  // namespace cuda
}  // namespace fastscore

// The CUDA backend's kernels and cuBLAS calls: the definitions of backends/cuda/primitives.hpp.
// Compile this file once with nvcc (C++20, --extended-lambda --expt-relaxed-constexpr) and link
// it with cuBLAS and the CUDA runtime: CMake's ftune_cuda target does (FTUNE_WITH_CUDA=ON); a
// program using the headers alone adds this file to its sources (docs/cuda.md), compiled with the
// host flags of its other files that change ftune's ABI namespace (config.hpp): the same -march
// (nvcc -Xcompiler=-march=native) and OpenMP (-Xcompiler=-fopenmp); a mismatch is a link error
// naming the two namespaces, never a silent one.
//
// Element-wise primitives are one grid-stride loop each (for_each below). Row-wise ones give a
// row to a block (LayerNorm, RMSNorm, cross-entropy: C or V values) or to a warp (attention's
// softmax: Tk values). Sums over rows (bias, LayerNorm weight gradients, Σx²) add fixed chunks
// and then the chunks in order, never with atomics, so every result is the same on every run.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <vector>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "ftune/backends/cuda/memory.hpp"
#include "ftune/backends/cuda/primitives.hpp"
#include "ftune/cuda/copy.hpp"
#include "ftune/cuda/runtime.hpp"

FTUNE_NAMESPACE_BEGIN

namespace backends::cuda {

namespace {

// ---------------------------------------------------------------------------------------------
// Launch helpers

using ftune::cuda::check;
using ftune::cuda::current_stream;

constexpr int threads_per_block = 256;

// Throws what the last launch reported (a bad configuration; kernel faults surface later).
void check_launch(const char* what) {
    check(cudaGetLastError(), what);
}

// Blocks for n work items of grid-stride loops: one item per thread up to 65,536 blocks (16.8 M
// items), more per thread beyond.
unsigned blocks_for(std::size_t n) {
    const std::size_t b = (n + threads_per_block - 1) / threads_per_block;
    return static_cast<unsigned>(b < 65536 ? (b == 0 ? 1 : b) : 65536);
}

template <class F>
__global__ void for_each_kernel(std::size_t n, F f) {
    for (std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += std::size_t(blockDim.x) * gridDim.x)
        f(i);
}

// Runs f(i) for i in [0, n) on the current stream.
template <class F>
void for_each(std::size_t n, F f, const char* what) {
    if (n == 0) return;
    for_each_kernel<<<blocks_for(n), threads_per_block, 0, current_stream()>>>(n, f);
    check_launch(what);
}

// Device scratch of n T's from the caching allocator, returned when the scope ends (the next
// user of the block runs on the same stream, after this scope's kernels).
template <class T>
class scratch {
  public:
    explicit scratch(std::size_t n)
        : p_(static_cast<T*>(ftune::cuda::allocator().allocate(n * sizeof(T), current_stream()))) {}
    scratch(const scratch&) = delete;
    scratch& operator=(const scratch&) = delete;
    ~scratch() { ftune::cuda::allocator().deallocate(p_); }
    T* get() const noexcept { return p_; }

  private:
    T* p_;
};

// ---------------------------------------------------------------------------------------------
// Reductions inside a warp and a block

__device__ inline float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ inline double warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ inline float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// The sum of v over the block (every thread gets it); `shared` holds 32 values.
template <class T>
__device__ T block_sum(T v, T* shared) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : T(0);
    v = warp_sum(v);
    __syncthreads();  // shared is reused by the next call
    return v;
}
// The maximum of v over the block (every thread gets it).
__device__ float block_max(float v, float* shared) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : -INFINITY;
    v = warp_max(v);
    __syncthreads();
    return v;
}

// Column sums: out(c) += Σ_r value(r, c) over rows, in chunks of rows_per_chunk rows (one thread
// per column and chunk), then the chunks in order: deterministic.
constexpr std::size_t rows_per_chunk = 64;

template <class V>
__global__ void column_partials_kernel(float* partial, std::size_t rows, std::size_t cols,
                                       V value) {
    const std::size_t c = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    const std::size_t chunk = blockIdx.y;
    if (c >= cols) return;
    const std::size_t r0 = chunk * rows_per_chunk;
    const std::size_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
    float s = 0.0f;
    for (std::size_t r = r0; r < r1; ++r) s += value(r, c);
    partial[chunk * cols + c] = s;
}

template <class V>
void column_sums(float* out, std::size_t rows, std::size_t cols, V value, const char* what) {
    if (rows == 0 || cols == 0) return;
    const std::size_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
    if (chunks > 65535)
        throw error(
            errc::unsupported, what,
            ftune::detail::cat(rows, " rows are more than this kernel's ", 65535 * rows_per_chunk));
    scratch<float> partial(chunks * cols);
    const dim3 grid(static_cast<unsigned>((cols + threads_per_block - 1) / threads_per_block),
                    static_cast<unsigned>(chunks));
    column_partials_kernel<<<grid, threads_per_block, 0, current_stream()>>>(partial.get(), rows,
                                                                             cols, value);
    check_launch(what);
    float* p = partial.get();
    for_each(
        cols,
        [=] __device__(std::size_t c) {
            float s = 0.0f;
            for (std::size_t k = 0; k < chunks; ++k) s += p[k * cols + c];
            out[c] += s;
        },
        what);
}

// ---------------------------------------------------------------------------------------------
// cuBLAS

void check_cublas(cublasStatus_t status, const char* what) {
    if (status == CUBLAS_STATUS_SUCCESS) return;
    throw error(status == CUBLAS_STATUS_ALLOC_FAILED ? errc::unsupported : errc::internal, what,
                std::string("cuBLAS: ") + cublasGetStatusName(status) + ": " +
                    cublasGetStatusString(status));
}

// This thread's cuBLAS handle, on the current stream. The default math mode: fp32 products in
// fp32 (TF32 only where asked for, which ftune never does), bf16 operands on tensor cores.
cublasHandle_t blas() {
    struct holder {
        cublasHandle_t h = nullptr;
        holder() {
            check_cublas(cublasCreate(&h), "cublasCreate");
            check_cublas(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
        }
        ~holder() { (void)cublasDestroy(h); }
    };
    thread_local holder handle;
    check_cublas(cublasSetStream(handle.h, current_stream()), "cublasSetStream");
    return handle.h;
}

int as_int(std::size_t v, const char* what) {
    if (v > std::size_t(INT_MAX))
        throw error(
            errc::unsupported, what,
            ftune::detail::cat("extent ", v, " is larger than cuBLAS's int (", INT_MAX, ")"));
    return static_cast<int>(v);
}

cublasOperation_t op(transpose t) {
    return t == transpose::yes ? CUBLAS_OP_T : CUBLAS_OP_N;
}

// Row-major C = op(A) op(B) is column-major Cᵀ = op(B)ᵀ op(A)ᵀ: cuBLAS gets B first, the same
// transpose flags, and N x M.
struct gemm_shape {
    int m, n, k, lda, ldb, ldc;
};
gemm_shape shape_of(std::size_t M, std::size_t N, std::size_t K, std::size_t lda, std::size_t ldb,
                    std::size_t ldc, const char* what) {
    return {as_int(N, what),   as_int(M, what),   as_int(K, what),
            as_int(lda, what), as_int(ldb, what), as_int(ldc, what)};
}

// A row-major (rows, cols) matrix with row stride ld, `batch` of them stride apart, rounded to
// bf16 into a packed copy (row stride cols, batch stride rows cols).
__nv_bfloat16* to_bf16_packed(__nv_bfloat16* out, const float* in, std::size_t rows,
                              std::size_t cols, std::size_t ld, std::size_t stride,
                              std::size_t batch, const char* what) {
    const std::size_t per = rows * cols;
    for_each(
        batch * per,
        [=] __device__(std::size_t i) {
            const std::size_t b = i / per, r = (i % per) / cols, c = i % cols;
            out[i] = __float2bfloat16_rn(in[b * stride + r * ld + c]);
        },
        what);
    return out;
}
// The same for operands already in bf16 (a strided copy).
__nv_bfloat16* to_bf16_packed(__nv_bfloat16* out, const bf16* in, std::size_t rows,
                              std::size_t cols, std::size_t ld, std::size_t stride,
                              std::size_t batch, const char* what) {
    const std::size_t per = rows * cols;
    const auto* src = reinterpret_cast<const __nv_bfloat16*>(in);
    for_each(
        batch * per,
        [=] __device__(std::size_t i) {
            const std::size_t b = i / per, r = (i % per) / cols, c = i % cols;
            out[i] = src[b * stride + r * ld + c];
        },
        what);
    return out;
}

// C = beta C for `batch` (M, N) matrices, rows ldc apart, stride_c apart (beta = 0 writes
// zeros, as BLAS): the product of an empty K, which cuBLAS rejects (its leading dimensions must
// be at least 1).
void scale_products(float* C, std::size_t M, std::size_t N, std::size_t ldc, std::size_t stride_c,
                    std::size_t batch, float beta, const char* what) {
    const std::size_t per = M * N;
    for_each(
        batch * per,
        [=] __device__(std::size_t i) {
            float* c = C + (i / per) * stride_c + (i % per) / N * ldc + i % N;
            *c = beta == 0.0f ? 0.0f : beta * *c;
        },
        what);
}

template <class TA, class TB>
void gemm_bf16_impl(transpose ta, transpose tb, std::size_t M, std::size_t N, std::size_t K,
                    float alpha, const TA* A, std::size_t lda, std::size_t stride_a, const TB* B,
                    std::size_t ldb, std::size_t stride_b, float beta, float* C, std::size_t ldc,
                    std::size_t stride_c, std::size_t batch) {
    const char* what = "backends::cuda::gemm_bf16";
    if (M == 0 || N == 0 || batch == 0) return;
    if (K == 0) return scale_products(C, M, N, ldc, stride_c, batch, beta, what);
    const std::size_t a_rows = ta == transpose::no ? M : K, a_cols = ta == transpose::no ? K : M;
    const std::size_t b_rows = tb == transpose::no ? K : N, b_cols = tb == transpose::no ? N : K;
    scratch<__nv_bfloat16> a16(batch * a_rows * a_cols + 1), b16(batch * b_rows * b_cols + 1);
    to_bf16_packed(a16.get(), A, a_rows, a_cols, lda, stride_a, batch, what);
    to_bf16_packed(b16.get(), B, b_rows, b_cols, ldb, stride_b, batch, what);
    const auto s = shape_of(M, N, K, a_cols, b_cols, ldc, what);
    check_cublas(cublasGemmStridedBatchedEx(
                     blas(), op(tb), op(ta), s.m, s.n, s.k, &alpha, b16.get(), CUDA_R_16BF, s.ldb,
                     static_cast<long long>(b_rows * b_cols), a16.get(), CUDA_R_16BF, s.lda,
                     static_cast<long long>(a_rows * a_cols), &beta, C, CUDA_R_32F, s.ldc,
                     static_cast<long long>(stride_c), as_int(batch, what), CUBLAS_COMPUTE_32F,
                     CUBLAS_GEMM_DEFAULT),
                 "cublasGemmStridedBatchedEx (bf16)");
}

// ---------------------------------------------------------------------------------------------
// Checks of ids on the device: the first bad position, or none

constexpr unsigned long long none = ~0ull;

// Throws out_of_range (naming the first bad position and its id) unless bad(i) is false for
// every i < n; one wait for the result.
template <class Bad>
void check_positions(std::size_t n, const token_id* ids, Bad bad, const char* what,
                     const char* kind, std::size_t limit, const char* advice) {
    if (n == 0) return;
    scratch<unsigned long long> first(1);
    unsigned long long* f = first.get();
    for_each(
        1, [=] __device__(std::size_t) { *f = none; }, what);
    for_each(
        n,
        [=] __device__(std::size_t i) {
            if (bad(i)) atomicMin(f, static_cast<unsigned long long>(i));
        },
        what);
    unsigned long long at = none;
    ftune::cuda::copy_to_host(&at, f, 1);
    if (at == none) return;
    token_id id = 0;
    ftune::cuda::copy_to_host(&id, ids + at, 1);
    throw error(errc::out_of_range, what,
                ftune::detail::cat(kind, " ", id, " at position ", at, " is outside [0, ", limit,
                                   ")", advice));
}

}  // namespace

// =============================================================================================
// The primitives

namespace {
// Sets the n U's at p to the low bytes of pattern.
template <class U>
void fill_as(void* p, std::size_t n, std::uint64_t pattern, const char* what) {
    auto* q = static_cast<U*>(p);
    const auto v = static_cast<U>(pattern);
    for_each(
        n, [=] __device__(std::size_t i) { q[i] = v; }, what);
}
}  // namespace

void fill_pattern(void* p, std::size_t n, std::size_t elem_bytes, std::uint64_t pattern) {
    const char* what = "device buffer fill";
    switch (elem_bytes) {
        case 1:
            return fill_as<std::uint8_t>(p, n, pattern, what);
        case 2:
            return fill_as<std::uint16_t>(p, n, pattern, what);
        case 4:
            return fill_as<std::uint32_t>(p, n, pattern, what);
        case 8:
            return fill_as<std::uint64_t>(p, n, pattern, what);
        default:
            throw error(
                errc::invalid_argument, what,
                ftune::detail::cat("elements of ", elem_bytes, " bytes (1, 2, 4 or 8 expected)"));
    }
}

// Matrix products ------------------------------------------------------------------------------

void gemm(transpose ta, transpose tb, std::size_t M, std::size_t N, std::size_t K, float alpha,
          const float* A, std::size_t lda, const float* B, std::size_t ldb, float beta, float* C,
          std::size_t ldc) {
    if (M == 0 || N == 0) return;
    if (K == 0) return scale_products(C, M, N, ldc, 0, 1, beta, "backends::cuda::gemm");
    const auto s = shape_of(M, N, K, lda, ldb, ldc, "backends::cuda::gemm");
    check_cublas(cublasSgemm(blas(), op(tb), op(ta), s.m, s.n, s.k, &alpha, B, s.ldb, A, s.lda,
                             &beta, C, s.ldc),
                 "cublasSgemm");
}

void gemm_strided_batched(transpose ta, transpose tb, std::size_t M, std::size_t N, std::size_t K,
                          float alpha, const float* A, std::size_t lda, std::size_t stride_a,
                          const float* B, std::size_t ldb, std::size_t stride_b, float beta,
                          float* C, std::size_t ldc, std::size_t stride_c, std::size_t batch) {
    if (M == 0 || N == 0 || batch == 0) return;
    const char* what = "backends::cuda::gemm_strided_batched";
    if (K == 0) return scale_products(C, M, N, ldc, stride_c, batch, beta, what);
    const auto s = shape_of(M, N, K, lda, ldb, ldc, what);
    check_cublas(cublasSgemmStridedBatched(blas(), op(tb), op(ta), s.m, s.n, s.k, &alpha, B, s.ldb,
                                           static_cast<long long>(stride_b), A, s.lda,
                                           static_cast<long long>(stride_a), &beta, C, s.ldc,
                                           static_cast<long long>(stride_c), as_int(batch, what)),
                 "cublasSgemmStridedBatched");
}

void gemm_bf16(transpose ta, transpose tb, std::size_t M, std::size_t N, std::size_t K, float alpha,
               const float* A, std::size_t lda, const float* B, std::size_t ldb, float beta,
               float* C, std::size_t ldc) {
    gemm_bf16_impl(ta, tb, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}
void gemm_bf16(transpose ta, transpose tb, std::size_t M, std::size_t N, std::size_t K, float alpha,
               const bf16* A, std::size_t lda, const float* B, std::size_t ldb, float beta,
               float* C, std::size_t ldc) {
    gemm_bf16_impl(ta, tb, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}
void gemm_strided_batched_bf16(transpose ta, transpose tb, std::size_t M, std::size_t N,
                               std::size_t K, float alpha, const float* A, std::size_t lda,
                               std::size_t stride_a, const float* B, std::size_t ldb,
                               std::size_t stride_b, float beta, float* C, std::size_t ldc,
                               std::size_t stride_c, std::size_t batch) {
    gemm_bf16_impl(ta, tb, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc,
                   stride_c, batch);
}
void gemm_strided_batched_bf16(transpose ta, transpose tb, std::size_t M, std::size_t N,
                               std::size_t K, float alpha, const bf16* A, std::size_t lda,
                               std::size_t stride_a, const float* B, std::size_t ldb,
                               std::size_t stride_b, float beta, float* C, std::size_t ldc,
                               std::size_t stride_c, std::size_t batch) {
    gemm_bf16_impl(ta, tb, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc,
                   stride_c, batch);
}

// Attention's head products: every head of every sequence in one cuBLAS call ----------------

// Element (r, c) of matrix j of a two-level batch (matrix (j / heads, j % heads) starts
// j / heads * s_seq + j % heads * s_head elements in), rows ld apart.
__device__ inline std::size_t head_offset(std::size_t j, std::size_t heads, std::size_t s_seq,
                                          std::size_t s_head) {
    return j / heads * s_seq + j % heads * s_head;
}
__device__ inline __nv_bfloat16 as_bf16(float x) {
    return __float2bfloat16_rn(x);
}
__device__ inline __nv_bfloat16 as_bf16(bf16 x) {
    return __ushort_as_bfloat16(x.bits);
}

// The `count` (rows, cols) matrices of a two-level batch rounded to bf16, packed one after
// another (row stride cols).
template <class Src>
void pack_heads_bf16(__nv_bfloat16* out, const Src* in, std::size_t rows, std::size_t cols,
                     std::size_t ld, std::size_t s_seq, std::size_t s_head, std::size_t heads,
                     std::size_t count, const char* what) {
    const std::size_t per = rows * cols;
    for_each(
        count * per,
        [=] __device__(std::size_t i) {
            const std::size_t j = i / per, e = i % per;
            out[i] = as_bf16(in[head_offset(j, heads, s_seq, s_head) + e / cols * ld + e % cols]);
        },
        what);
}

template <class TA>
void gemm_heads_impl(ftune::precision p, transpose ta, transpose tb, std::size_t M, std::size_t N,
                     std::size_t K, float alpha, const TA* A, std::size_t lda, std::size_t a_seq,
                     std::size_t a_head, const float* B, std::size_t ldb, std::size_t b_seq,
                     std::size_t b_head, float beta, float* C, std::size_t ldc, std::size_t c_seq,
                     std::size_t c_head, std::size_t sequences, std::size_t heads) {
    const char* what = "backends::cuda::gemm_heads";
    const std::size_t count = sequences * heads;
    if (M == 0 || N == 0 || count == 0) return;
    if (K == 0) {
        for (std::size_t s = 0; s < sequences; ++s)
            scale_products(C + s * c_seq, M, N, ldc, c_head, heads, beta, what);
        return;
    }
    const bool bf = p == ftune::precision::bf16 || std::is_same_v<TA, bf16>;
    const std::size_t a_rows = ta == transpose::no ? M : K, a_cols = ta == transpose::no ? K : M;
    const std::size_t b_rows = tb == transpose::no ? K : N, b_cols = tb == transpose::no ? N : K;
    // bf16: both operands rounded into packed copies (matrix j at j rows cols); fp32: in place
    scratch<__nv_bfloat16> a16(bf ? count * a_rows * a_cols : 1),
        b16(bf ? count * b_rows * b_cols : 1);
    if (bf) {
        pack_heads_bf16(a16.get(), A, a_rows, a_cols, lda, a_seq, a_head, heads, count, what);
        pack_heads_bf16(b16.get(), B, b_rows, b_cols, ldb, b_seq, b_head, heads, count, what);
    }
    // the pointer arrays cuBLAS reads: A's, B's and C's matrices, made on the device
    scratch<void*> ptrs(3 * count);
    void** pa = ptrs.get();
    const std::size_t ea = bf ? sizeof(__nv_bfloat16) : sizeof(float), eb = ea;
    const std::size_t a_per = a_rows * a_cols, b_per = b_rows * b_cols;
    char* const a0 =
        bf ? reinterpret_cast<char*>(a16.get()) : reinterpret_cast<char*>(const_cast<TA*>(A));
    char* const b0 =
        bf ? reinterpret_cast<char*>(b16.get()) : reinterpret_cast<char*>(const_cast<float*>(B));
    char* const c0 = reinterpret_cast<char*>(C);
    for_each(
        count,
        [=] __device__(std::size_t j) {
            pa[j] = a0 + ea * (bf ? j * a_per : head_offset(j, heads, a_seq, a_head));
            pa[count + j] = b0 + eb * (bf ? j * b_per : head_offset(j, heads, b_seq, b_head));
            pa[2 * count + j] = c0 + sizeof(float) * head_offset(j, heads, c_seq, c_head);
        },
        what);
    const auto s = shape_of(M, N, K, bf ? a_cols : lda, bf ? b_cols : ldb, ldc, what);
    const cudaDataType_t type = bf ? CUDA_R_16BF : CUDA_R_32F;
    void* const* arrays = ptrs.get();
    check_cublas(
        cublasGemmBatchedEx(blas(), op(tb), op(ta), s.m, s.n, s.k, &alpha, arrays + count, type,
                            s.ldb, arrays, type, s.lda, &beta, arrays + 2 * count, CUDA_R_32F,
                            s.ldc, as_int(count, what), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "cublasGemmBatchedEx");
}

void gemm_heads(ftune::precision p, transpose ta, transpose tb, std::size_t M, std::size_t N,
                std::size_t K, float alpha, const float* A, std::size_t lda, std::size_t a_seq,
                std::size_t a_head, const float* B, std::size_t ldb, std::size_t b_seq,
                std::size_t b_head, float beta, float* C, std::size_t ldc, std::size_t c_seq,
                std::size_t c_head, std::size_t sequences, std::size_t heads) {
    gemm_heads_impl(p, ta, tb, M, N, K, alpha, A, lda, a_seq, a_head, B, ldb, b_seq, b_head, beta,
                    C, ldc, c_seq, c_head, sequences, heads);
}
void gemm_heads(ftune::precision p, transpose ta, transpose tb, std::size_t M, std::size_t N,
                std::size_t K, float alpha, const bf16* A, std::size_t lda, std::size_t a_seq,
                std::size_t a_head, const float* B, std::size_t ldb, std::size_t b_seq,
                std::size_t b_head, float beta, float* C, std::size_t ldc, std::size_t c_seq,
                std::size_t c_head, std::size_t sequences, std::size_t heads) {
    if (p != ftune::precision::bf16)
        throw error(errc::invalid_argument, "backends::cuda::gemm_heads",
                    "an operand kept in bf16 is multiplied in precision::bf16 only");
    gemm_heads_impl(p, ta, tb, M, N, K, alpha, A, lda, a_seq, a_head, B, ldb, b_seq, b_head, beta,
                    C, ldc, c_seq, c_head, sequences, heads);
}

// Bias, residual, activations ----------------------------------------------------------------

void bias_add(float* y, const float* bias, std::size_t rows, std::size_t cols) {
    for_each(
        rows * cols, [=] __device__(std::size_t i) { y[i] += bias[i % cols]; }, "bias_add");
}

void bias_backward(float* dbias, const float* dy, std::size_t rows, std::size_t cols) {
    column_sums(
        dbias, rows, cols,
        [=] __device__(std::size_t r, std::size_t c) { return dy[r * cols + c]; }, "bias_backward");
}

void residual_add(float* out, const float* a, const float* b, std::size_t n) {
    for_each(
        n, [=] __device__(std::size_t i) { out[i] = a[i] + b[i]; }, "residual_add");
}

void gelu_forward(float* y, const float* x, std::size_t n) {
    for_each(
        n,
        [=] __device__(std::size_t i) { y[i] = 0.5f * x[i] * (1.0f + erff(x[i] / sqrtf(2.0f))); },
        "gelu_forward");
}

void gelu_backward(float* dx, const float* x, const float* dy, std::size_t n) {
    for_each(
        n,
        [=] __device__(std::size_t i) {
            const float inv_sqrt_2pi = 1.0f / sqrtf(2.0f * 3.14159265358979323846f);
            const float cdf = 0.5f * (1.0f + erff(x[i] / sqrtf(2.0f)));
            const float pdf = inv_sqrt_2pi * expf(-0.5f * x[i] * x[i]);
            dx[i] += dy[i] * (cdf + x[i] * pdf);
        },
        "gelu_backward");
}

void gelu_tanh_forward(float* y, const float* x, std::size_t n) {
    for_each(
        n,
        [=] __device__(std::size_t i) {
            const float k = sqrtf(2.0f / 3.14159265358979323846f);
            const float u = k * (x[i] + 0.044715f * x[i] * x[i] * x[i]);
            y[i] = 0.5f * x[i] * (1.0f + tanhf(u));
        },
        "gelu_tanh_forward");
}

void gelu_tanh_backward(float* dx, const float* x, const float* dy, std::size_t n) {
    for_each(
        n,
        [=] __device__(std::size_t i) {
            const float k = sqrtf(2.0f / 3.14159265358979323846f);
            const float u = k * (x[i] + 0.044715f * x[i] * x[i] * x[i]);
            const float t = tanhf(u);
            const float du = k * (1.0f + 3.0f * 0.044715f * x[i] * x[i]);
            dx[i] += dy[i] * (0.5f * (1.0f + t) + 0.5f * x[i] * (1.0f - t * t) * du);
        },
        "gelu_tanh_backward");
}

void tanh_forward(float* y, const float* x, std::size_t n) {
    for_each(
        n, [=] __device__(std::size_t i) { y[i] = tanhf(x[i]); }, "tanh_forward");
}

void tanh_backward(float* dx, const float* y, const float* dy, std::size_t n) {
    for_each(
        n, [=] __device__(std::size_t i) { dx[i] += dy[i] * (1.0f - y[i] * y[i]); },
        "tanh_backward");
}

void relu_forward(float* y, const float* x, std::size_t n) {
    for_each(
        n, [=] __device__(std::size_t i) { y[i] = x[i] > 0.0f ? x[i] : 0.0f; }, "relu_forward");
}

void relu_backward(float* dx, const float* x, const float* dy, std::size_t n) {
    for_each(
        n,
        [=] __device__(std::size_t i) {
            if (x[i] > 0.0f) dx[i] += dy[i];
        },
        "relu_backward");
}

void silu_forward(float* y, const float* x, std::size_t n) {
    for_each(
        n, [=] __device__(std::size_t i) { y[i] = x[i] / (1.0f + expf(-x[i])); }, "silu_forward");
}

void silu_backward(float* dx, const float* x, const float* dy, std::size_t n) {
    for_each(
        n,
        [=] __device__(std::size_t i) {
            const float s = 1.0f / (1.0f + expf(-x[i]));
            dx[i] += dy[i] * s * (1.0f + x[i] * (1.0f - s));
        },
        "silu_backward");
}

void multiply(float* out, const float* a, const float* b, std::size_t n) {
    for_each(
        n, [=] __device__(std::size_t i) { out[i] = a[i] * b[i]; }, "multiply");
}

void multiply_backward(float* da, float* db, const float* a, const float* b, const float* dout,
                       std::size_t n) {
    for_each(
        n,
        [=] __device__(std::size_t i) {
            if (da) da[i] += dout[i] * b[i];
            if (db) db[i] += dout[i] * a[i];
        },
        "multiply_backward");
}

// Normalizations ---------------------------------------------------------------------------------

namespace {
__global__ void layer_norm_forward_kernel(float* out, float* mean, float* rstd, const float* x,
                                          const float* weight, const float* bias, std::size_t C,
                                          float eps) {
    __shared__ float shared[32];
    const std::size_t r = blockIdx.x;
    const float* xr = x + r * C;
    float s = 0.0f;
    for (std::size_t c = threadIdx.x; c < C; c += blockDim.x) s += xr[c];
    const float m = block_sum(s, shared) / float(C);
    float v = 0.0f;
    for (std::size_t c = threadIdx.x; c < C; c += blockDim.x) v += (xr[c] - m) * (xr[c] - m);
    const float rs = 1.0f / sqrtf(block_sum(v, shared) / float(C) + eps);
    for (std::size_t c = threadIdx.x; c < C; c += blockDim.x)
        out[r * C + c] = (xr[c] - m) * rs * weight[c] + bias[c];
    if (threadIdx.x == 0) {
        mean[r] = m;
        rstd[r] = rs;
    }
}

__global__ void layer_norm_backward_dx_kernel(float* dx, const float* dout, const float* x,
                                              const float* weight, const float* mean,
                                              const float* rstd, std::size_t C) {
    __shared__ float shared[32];
    const std::size_t r = blockIdx.x;
    const float* xr = x + r * C;
    const float* gr = dout + r * C;
    float g = 0.0f, gn = 0.0f;
    for (std::size_t c = threadIdx.x; c < C; c += blockDim.x) {
        const float norm = (xr[c] - mean[r]) * rstd[r];
        g += weight[c] * gr[c];
        gn += weight[c] * gr[c] * norm;
    }
    const float mean_g = block_sum(g, shared) / float(C);
    const float mean_gn = block_sum(gn, shared) / float(C);
    for (std::size_t c = threadIdx.x; c < C; c += blockDim.x) {
        const float norm = (xr[c] - mean[r]) * rstd[r];
        dx[r * C + c] += (weight[c] * gr[c] - mean_g - norm * mean_gn) * rstd[r];
    }
}

__global__ void rms_norm_forward_kernel(float* out, float* rstd, const float* x,
                                        const float* weight, std::size_t C, float eps) {
    __shared__ float shared[32];
    const std::size_t r = blockIdx.x;
    const float* xr = x + r * C;
    float ms = 0.0f;
    for (std::size_t c = threadIdx.x; c < C; c += blockDim.x) ms += xr[c] * xr[c];
    const float s = 1.0f / sqrtf(block_sum(ms, shared) / float(C) + eps);
    for (std::size_t c = threadIdx.x; c < C; c += blockDim.x)
        out[r * C + c] = xr[c] * s * weight[c];
    if (threadIdx.x == 0) rstd[r] = s;
}

__global__ void rms_norm_backward_dx_kernel(float* dx, const float* dout, const float* x,
                                            const float* weight, const float* rstd, std::size_t C) {
    __shared__ float shared[32];
    const std::size_t r = blockIdx.x;
    const float* xr = x + r * C;
    const float* gr = dout + r * C;
    float gn = 0.0f;
    for (std::size_t c = threadIdx.x; c < C; c += blockDim.x)
        gn += weight[c] * gr[c] * xr[c] * rstd[r];
    const float mean_gn = block_sum(gn, shared) / float(C);
    for (std::size_t c = threadIdx.x; c < C; c += blockDim.x) {
        const float norm = xr[c] * rstd[r];
        dx[r * C + c] += (weight[c] * gr[c] - norm * mean_gn) * rstd[r];
    }
}

// One block per row: grid.x is the row (rows up to 2³¹ - 1).
unsigned row_grid(std::size_t rows, const char* what) {
    if (rows > std::size_t(INT_MAX))
        throw error(errc::unsupported, what, ftune::detail::cat(rows, " rows are too many"));
    return static_cast<unsigned>(rows);
}
}  // namespace

void layer_norm_forward(float* out, float* mean, float* rstd, const float* x, const float* weight,
                        const float* bias, std::size_t rows, std::size_t C, float eps) {
    if (rows == 0) return;
    layer_norm_forward_kernel<<<row_grid(rows, "layer_norm_forward"), threads_per_block, 0,
                                current_stream()>>>(out, mean, rstd, x, weight, bias, C, eps);
    check_launch("layer_norm_forward");
}

void layer_norm_backward(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                         const float* weight, const float* mean, const float* rstd,
                         std::size_t rows, std::size_t C) {
    if (rows == 0) return;
    layer_norm_backward_dx_kernel<<<row_grid(rows, "layer_norm_backward"), threads_per_block, 0,
                                    current_stream()>>>(dx, dout, x, weight, mean, rstd, C);
    check_launch("layer_norm_backward");
    column_sums(
        dweight, rows, C,
        [=] __device__(std::size_t r, std::size_t c) {
            return (x[r * C + c] - mean[r]) * rstd[r] * dout[r * C + c];
        },
        "layer_norm_backward");
    column_sums(
        dbias, rows, C, [=] __device__(std::size_t r, std::size_t c) { return dout[r * C + c]; },
        "layer_norm_backward");
}

void rms_norm_forward(float* out, float* rstd, const float* x, const float* weight,
                      std::size_t rows, std::size_t C, float eps) {
    if (rows == 0) return;
    rms_norm_forward_kernel<<<row_grid(rows, "rms_norm_forward"), threads_per_block, 0,
                              current_stream()>>>(out, rstd, x, weight, C, eps);
    check_launch("rms_norm_forward");
}

void rms_norm_backward(float* dx, float* dweight, const float* dout, const float* x,
                       const float* weight, const float* rstd, std::size_t rows, std::size_t C) {
    if (rows == 0) return;
    rms_norm_backward_dx_kernel<<<row_grid(rows, "rms_norm_backward"), threads_per_block, 0,
                                  current_stream()>>>(dx, dout, x, weight, rstd, C);
    check_launch("rms_norm_backward");
    column_sums(
        dweight, rows, C,
        [=] __device__(std::size_t r, std::size_t c) {
            return x[r * C + c] * rstd[r] * dout[r * C + c];
        },
        "rms_norm_backward");
}

// Rotary embeddings, grouped-query heads ---------------------------------------------------------

void rope_table(float* cos, float* sin, const token_id* positions, std::size_t rows,
                std::size_t half, double theta) {
    const float th = float(theta);
    for_each(
        rows * half,
        [=] __device__(std::size_t j) {
            const std::size_t r = j / half, i = j % half;
            const float inv = 1.0f / powf(th, float(2 * i) / float(2 * half));
            const float a = float(positions[r]) * inv;
            cos[j] = cosf(a);
            sin[j] = sinf(a);
        },
        "rope_table");
}

void rope_apply(float* x, std::size_t ld, const float* cos, const float* sin, std::size_t rows,
                std::size_t heads, std::size_t half, bool inverse) {
    for_each(
        rows * heads * half,
        [=] __device__(std::size_t j) {
            const std::size_t r = j / (heads * half), h = (j / half) % heads, i = j % half;
            float* v = x + r * ld + h * 2 * half;
            const float c = cos[r * half + i], s = inverse ? -sin[r * half + i] : sin[r * half + i];
            const float a = v[i], b = v[i + half];
            v[i] = a * c - b * s;
            v[i + half] = b * c + a * s;
        },
        "rope_apply");
}

void repeat_heads(float* out, const float* in, std::size_t rows, std::size_t kv_heads,
                  std::size_t group, std::size_t d) {
    for_each(
        rows * kv_heads * group * d,
        [=] __device__(std::size_t o) {
            const std::size_t i = o % d, head = o / d;  // head = (r kv_heads + j) group + g
            const std::size_t r = head / (kv_heads * group), j = (head / group) % kv_heads;
            out[o] = in[(r * kv_heads + j) * d + i];
        },
        "repeat_heads");
}

void repeat_heads_backward(float* din, const float* dout, std::size_t rows, std::size_t kv_heads,
                           std::size_t group, std::size_t d) {
    for_each(
        rows * kv_heads * d,
        [=] __device__(std::size_t o) {
            const std::size_t i = o % d, rj = o / d;  // rj = r kv_heads + j
            float s = din[o];
            for (std::size_t g = 0; g < group; ++g) s += dout[(rj * group + g) * d + i];
            din[o] = s;
        },
        "repeat_heads_backward");
}

// Attention softmax -------------------------------------------------------------------------------

namespace {
constexpr int warps_per_block = threads_per_block / 32;

__global__ void softmax_forward_kernel(float* probs, const float* scores, const float* key_mask,
                                       float scale, std::size_t rows, std::size_t HTq,
                                       std::size_t Tq, std::size_t Tk, bool causal) {
    const std::size_t row = std::size_t(blockIdx.x) * warps_per_block + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const std::size_t b = row / HTq, q = row % Tq, off = row * Tk;
    const float* mask = key_mask ? key_mask + b * Tk : nullptr;
    auto dropped = [&](std::size_t k) { return causal && k + Tq > q + Tk; };
    float mx = -INFINITY;
    for (std::size_t k = lane; k < Tk; k += 32) {
        if (dropped(k)) continue;
        mx = fmaxf(mx, scale * scores[off + k] + (mask ? mask[k] : 0.0f));
    }
    mx = warp_max(mx);
    if (mx == -INFINITY) {
        for (std::size_t k = lane; k < Tk; k += 32) probs[off + k] = 0.0f;
        return;
    }
    float sum = 0.0f;
    for (std::size_t k = lane; k < Tk; k += 32) {
        const float z = scale * scores[off + k] + (mask ? mask[k] : 0.0f);
        const float e = dropped(k) ? 0.0f : expf(z - mx);
        probs[off + k] = e;
        sum += e;
    }
    sum = warp_sum(sum);
    for (std::size_t k = lane; k < Tk; k += 32) probs[off + k] /= sum;
}

template <class Out>
__global__ void softmax_backward_kernel(Out* dscores, const float* probs, const float* dprobs,
                                        float scale, std::size_t rows, std::size_t Tk,
                                        const std::uint8_t* keep, float keep_scale,
                                        bool accumulate) {
    const std::size_t row = std::size_t(blockIdx.x) * warps_per_block + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const std::size_t off = row * Tk;
    auto g = [&](std::size_t i) {
        return keep ? dprobs[i] * (keep[i] ? keep_scale : 0.0f) : dprobs[i];
    };
    float dot = 0.0f;
    for (std::size_t k = lane; k < Tk; k += 32) dot += probs[off + k] * g(off + k);
    dot = warp_sum(dot);
    for (std::size_t k = lane; k < Tk; k += 32) {
        const float v = scale * probs[off + k] * (g(off + k) - dot);
        if constexpr (std::is_same_v<Out, __nv_bfloat16>)
            dscores[off + k] = __float2bfloat16_rn(v);
        else
            dscores[off + k] = accumulate ? dscores[off + k] + v : v;
    }
}

unsigned warp_row_blocks(std::size_t rows, const char* what) {
    const std::size_t b = (rows + warps_per_block - 1) / warps_per_block;
    if (b > std::size_t(INT_MAX))
        throw error(errc::unsupported, what, ftune::detail::cat(rows, " rows are too many"));
    return static_cast<unsigned>(b);
}
}  // namespace

void softmax_forward(float* probs, const float* scores, const float* key_mask, float scale,
                     std::size_t B, std::size_t H, std::size_t Tq, std::size_t Tk, bool causal) {
    const std::size_t rows = B * H * Tq;
    if (rows == 0 || Tk == 0) return;
    softmax_forward_kernel<<<warp_row_blocks(rows, "softmax_forward"), threads_per_block, 0,
                             current_stream()>>>(probs, scores, key_mask, scale, rows, H * Tq, Tq,
                                                 Tk, causal);
    check_launch("softmax_forward");
}

void softmax_backward(float* dscores, const float* probs, const float* dprobs, float scale,
                      std::size_t rows, std::size_t Tk, const std::uint8_t* keep, float keep_scale,
                      bool accumulate) {
    if (rows == 0 || Tk == 0) return;
    softmax_backward_kernel<<<warp_row_blocks(rows, "softmax_backward"), threads_per_block, 0,
                              current_stream()>>>(dscores, probs, dprobs, scale, rows, Tk, keep,
                                                  keep_scale, accumulate);
    check_launch("softmax_backward");
}

void softmax_backward(bf16* dscores, const float* probs, const float* dprobs, float scale,
                      std::size_t rows, std::size_t Tk, const std::uint8_t* keep, float keep_scale,
                      bool accumulate) {
    if (accumulate)
        throw error(errc::invalid_argument, "softmax_backward",
                    "a bf16 dscores is written, not accumulated (accumulate = false)");
    if (rows == 0 || Tk == 0) return;
    softmax_backward_kernel<<<warp_row_blocks(rows, "softmax_backward"), threads_per_block, 0,
                              current_stream()>>>(reinterpret_cast<__nv_bfloat16*>(dscores), probs,
                                                  dprobs, scale, rows, Tk, keep, keep_scale, false);
    check_launch("softmax_backward");
}

// Dropout --------------------------------------------------------------------------------------

namespace {
// The keep threshold of the reference backend: keep iff bits >= ceil(p 2³²) (all dropped at p = 1).
std::uint32_t dropout_threshold(double p) {
    if (!(p >= 0.0 && p <= 1.0))
        throw error(errc::invalid_argument, "dropout",
                    ftune::detail::cat("probability ", p, " is not in [0, 1]"));
    const double t = std::ceil(p * 4294967296.0);
    return t >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<std::uint32_t>(t);
}

template <class Out>
void dropout_impl(Out* y, std::uint8_t* mask, const float* x, float p, std::size_t n,
                  const random_stream& s) {
    const std::uint32_t thr = dropout_threshold(double(p));
    const float inv_keep = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    const bool some = p < 1.0f;
    const random_stream st = s;
    for_each(
        n,
        [=] __device__(std::size_t i) {
            const std::uint8_t k = some && st.bits(i) >= thr ? 1 : 0;
            mask[i] = k;
            const float v = x[i] * (k ? inv_keep : 0.0f);
            Out* out = y + i;  // captured outside the if constexpr, as nvcc requires
            if constexpr (std::is_same_v<Out, __nv_bfloat16>)
                *out = __float2bfloat16_rn(v);
            else
                *out = v;
        },
        "dropout_forward");
}
}  // namespace

void dropout_forward(float* y, std::uint8_t* mask, const float* x, float p, std::size_t n,
                     const random_stream& s) {
    dropout_impl(y, mask, x, p, n, s);
}

void dropout_forward(bf16* y, std::uint8_t* mask, const float* x, float p, std::size_t n,
                     const random_stream& s) {
    dropout_impl(reinterpret_cast<__nv_bfloat16*>(y), mask, x, p, n, s);
}

void dropout_backward(float* dx, const std::uint8_t* mask, const float* dy, float p,
                      std::size_t n) {
    const float inv_keep = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    for_each(
        n, [=] __device__(std::size_t i) { dx[i] += dy[i] * (mask[i] ? inv_keep : 0.0f); },
        "dropout_backward");
}

// Ids, masks, copies -----------------------------------------------------------------------------

void key_mask(float* mask, const token_id* attention, std::size_t n) {
    for_each(
        n,
        [=] __device__(std::size_t i) {
            mask[i] = !attention || attention[i] != 0 ? 0.0f : -FLT_MAX;
        },
        "key_mask");
}

void position_ids(token_id* ids, std::size_t n, std::size_t t, std::size_t start) {
    for_each(
        n, [=] __device__(std::size_t i) { ids[i] = token_id(start + i % t); }, "position_ids");
}

void copy_ids(token_id* out, const token_id* in, std::size_t n) {
    for_each(
        n, [=] __device__(std::size_t i) { out[i] = in ? in[i] : 0; }, "copy_ids");
}

void copy(float* out, const float* in, std::size_t n) {
    if (n == 0) return;
    check(cudaMemcpyAsync(out, in, n * sizeof(float), cudaMemcpyDeviceToDevice, current_stream()),
          "copy");
}

void gather_rows(float* out, const float* x, std::size_t rows, std::size_t C, std::size_t stride) {
    for_each(
        rows * C,
        [=] __device__(std::size_t i) {
            const std::size_t r = i / C, c = i % C;
            out[i] = x[r * stride * C + c];
        },
        "gather_rows");
}

// Embedding, cross-entropy -----------------------------------------------------------------------

namespace {
// Throws out_of_range naming the first id outside [0, vocab) (one wait for the result).
void check_ids(const token_id* ids, std::size_t n, std::size_t vocab, const char* what) {
    check_positions(
        n, ids,
        [=] __device__(std::size_t i) {
            return ids[i] < 0 || static_cast<std::size_t>(ids[i]) >= vocab;
        },
        what, "id", vocab, "; check that the tokenizer's vocabulary matches the model");
}
}  // namespace

void embedding_forward(float* out, const token_id* ids, const float* table, std::size_t n,
                       std::size_t C, std::size_t vocab) {
    check_ids(ids, n, vocab, "embedding_forward");
    for_each(
        n * C,
        [=] __device__(std::size_t j) {
            const std::size_t i = j / C, c = j % C;
            out[j] = table[std::size_t(ids[i]) * C + c];
        },
        "embedding_forward");
}

void embedding_backward(float* dtable, const token_id* ids, const float* dout, std::size_t n,
                        std::size_t C, std::size_t vocab, token_id padding_idx) {
    check_ids(ids, n, vocab, "embedding_backward");
    // one thread per column, the tokens in order: repeated ids add up in the reference's order
    for_each(
        C,
        [=] __device__(std::size_t c) {
            for (std::size_t i = 0; i < n; ++i)
                if (ids[i] != padding_idx) dtable[std::size_t(ids[i]) * C + c] += dout[i * C + c];
        },
        "embedding_backward");
}

namespace {
__global__ void cross_entropy_forward_kernel(float* losses, const float* logits,
                                             const token_id* targets, std::size_t V,
                                             token_id ignore_index) {
    __shared__ float shared[32];
    const std::size_t r = blockIdx.x;
    if (targets[r] == ignore_index) {
        if (threadIdx.x == 0) losses[r] = 0.0f;
        return;
    }
    const float* z = logits + r * V;
    float mx = -INFINITY;
    for (std::size_t v = threadIdx.x; v < V; v += blockDim.x) mx = fmaxf(mx, z[v]);
    mx = block_max(mx, shared);
    float sum = 0.0f;
    for (std::size_t v = threadIdx.x; v < V; v += blockDim.x) sum += expf(z[v] - mx);
    sum = block_sum(sum, shared);
    if (threadIdx.x == 0) losses[r] = logf(sum) + mx - z[targets[r]];
}

__global__ void cross_entropy_backward_kernel(float* dlogits, const float* logits,
                                              const token_id* targets, const float* dlosses,
                                              std::size_t V, token_id ignore_index) {
    __shared__ float shared[32];
    const std::size_t r = blockIdx.x;
    if (targets[r] == ignore_index) return;
    const float* z = logits + r * V;
    float mx = -INFINITY;
    for (std::size_t v = threadIdx.x; v < V; v += blockDim.x) mx = fmaxf(mx, z[v]);
    mx = block_max(mx, shared);
    float sum = 0.0f;
    for (std::size_t v = threadIdx.x; v < V; v += blockDim.x) sum += expf(z[v] - mx);
    sum = block_sum(sum, shared);
    const std::size_t t = std::size_t(targets[r]);
    for (std::size_t v = threadIdx.x; v < V; v += blockDim.x) {
        const float p = expf(z[v] - mx) / sum;
        dlogits[r * V + v] += dlosses[r] * (p - (v == t ? 1.0f : 0.0f));
    }
}

void check_targets(const token_id* targets, std::size_t rows, std::size_t V,
                   token_id ignore_index) {
    check_positions(
        rows, targets,
        [=] __device__(std::size_t r) {
            return targets[r] != ignore_index && (targets[r] < 0 || std::size_t(targets[r]) >= V);
        },
        "cross_entropy", "target", V,
        ftune::detail::cat(" and is not the ignore index ", ignore_index).c_str());
}
}  // namespace

std::size_t cross_entropy_forward(float* losses, const float* logits, const token_id* targets,
                                  std::size_t rows, std::size_t V, token_id ignore_index) {
    if (rows == 0) return 0;
    check_targets(targets, rows, V, ignore_index);
    cross_entropy_forward_kernel<<<row_grid(rows, "cross_entropy_forward"), threads_per_block, 0,
                                   current_stream()>>>(losses, logits, targets, V, ignore_index);
    check_launch("cross_entropy_forward");
    scratch<unsigned long long> counted(1);
    unsigned long long* cnt = counted.get();
    for_each(
        1,
        [=] __device__(std::size_t) {
            unsigned long long k = 0;
            for (std::size_t r = 0; r < rows; ++r) k += targets[r] != ignore_index;
            *cnt = k;
        },
        "cross_entropy_forward");
    unsigned long long count = 0;
    ftune::cuda::copy_to_host(&count, cnt, 1);
    return static_cast<std::size_t>(count);
}

void cross_entropy_backward(float* dlogits, const float* logits, const token_id* targets,
                            const float* dlosses, std::size_t rows, std::size_t V,
                            token_id ignore_index) {
    if (rows == 0) return;
    check_targets(targets, rows, V, ignore_index);
    cross_entropy_backward_kernel<<<row_grid(rows, "cross_entropy_backward"), threads_per_block, 0,
                                    current_stream()>>>(dlogits, logits, targets, dlosses, V,
                                                        ignore_index);
    check_launch("cross_entropy_backward");
}

// Reductions, optimizer updates
// --------------------------------------------------------------------

namespace {
constexpr unsigned sum_blocks_max = 1024;

__global__ void sum_squares_partial_kernel(double* partial, const float* x, std::size_t n) {
    __shared__ double shared[32];
    double s = 0.0;
    for (std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += std::size_t(blockDim.x) * gridDim.x)
        s += double(x[i]) * double(x[i]);
    s = block_sum(s, shared);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void sum_partials_kernel(double* out, const double* partial, unsigned count) {
    __shared__ double shared[32];
    double s = 0.0;
    for (unsigned i = threadIdx.x; i < count; i += blockDim.x) s += partial[i];
    s = block_sum(s, shared);
    if (threadIdx.x == 0) *out = s;
}
}  // namespace

double sum_squares(const float* x, std::size_t n) {
    if (n == 0) return 0.0;
    // the grid depends on n only: the same partial sums, in the same order, on every run
    const unsigned blocks = std::min<unsigned>(blocks_for(n), sum_blocks_max);
    scratch<double> partial(blocks + 1);
    sum_squares_partial_kernel<<<blocks, threads_per_block, 0, current_stream()>>>(partial.get(), x,
                                                                                   n);
    check_launch("sum_squares");
    sum_partials_kernel<<<1, threads_per_block, 0, current_stream()>>>(partial.get() + blocks,
                                                                       partial.get(), blocks);
    check_launch("sum_squares");
    double s = 0.0;
    ftune::cuda::copy_to_host(&s, partial.get() + blocks, 1);
    return s;
}

double sum_squares_list(const float* const* xs, const std::size_t* ns, std::size_t count) {
    if (count == 0) return 0.0;
    std::vector<unsigned> blocks(count);
    std::size_t slots = count + 1;  // each tensor's sum, then the total
    for (std::size_t i = 0; i < count; ++i)
        slots += blocks[i] = ns[i] ? std::min<unsigned>(blocks_for(ns[i]), sum_blocks_max) : 0;
    scratch<double> partial(slots);
    double* const sums = partial.get();  // (count) per tensor, then the total, then partials
    double* part = sums + count + 1;
    for (std::size_t i = 0; i < count; ++i) {
        if (ns[i] == 0) {  // an empty tensor adds 0
            sum_partials_kernel<<<1, threads_per_block, 0, current_stream()>>>(sums + i, part, 0);
            check_launch("sum_squares_list");
            continue;
        }
        // each tensor as sum_squares sums it: the same partials, the same order
        sum_squares_partial_kernel<<<blocks[i], threads_per_block, 0, current_stream()>>>(
            part, xs[i], ns[i]);
        check_launch("sum_squares_list");
        sum_partials_kernel<<<1, threads_per_block, 0, current_stream()>>>(sums + i, part,
                                                                           blocks[i]);
        check_launch("sum_squares_list");
        part += blocks[i];
    }
    // the tensors' sums added in list order, as the host adds sum_squares' results
    for_each(
        1,
        [=] __device__(std::size_t) {
            double s = 0.0;
            for (std::size_t i = 0; i < count; ++i) s += sums[i];
            sums[count] = s;
        },
        "sum_squares_list");
    double s = 0.0;
    ftune::cuda::copy_to_host(&s, sums + count, 1);
    return s;
}

void scale(float* x, float alpha, std::size_t n) {
    for_each(
        n, [=] __device__(std::size_t i) { x[i] *= alpha; }, "scale");
}

void adamw_update(float* param, const float* grad, float* m, float* v, std::size_t n,
                  const adamw_params& h) {
    // the constants as the reference computes them (double, then rounded to float)
    const double t = double(h.step);
    const float decay = float(1.0 - h.lr * h.weight_decay);
    const float w1 = float(1.0 - h.beta1), b2 = float(h.beta2), w2 = float(1.0 - h.beta2),
                eps = float(h.eps);
    const float step_size = float(h.lr / (1.0 - std::pow(h.beta1, t)));
    const float bc2_sqrt = float(std::sqrt(1.0 - std::pow(h.beta2, t)));
    const float gs = float(h.grad_scale);  // the gradient as clip_grad_norm scales it
    for_each(
        n,
        [=] __device__(std::size_t i) {
            float p = param[i] * decay;
            const float g = __fmul_rn(grad[i], gs);  // rounded: never fused into an FMA
            const float mi = m[i] + w1 * (g - m[i]);
            const float vi = v[i] * b2 + w2 * g * g;
            m[i] = mi;
            v[i] = vi;
            const float denom = sqrtf(vi) / bc2_sqrt + eps;
            param[i] = p + -step_size * (mi / denom);
        },
        "adamw_update");
}

void sgd_update(float* param, const float* grad, float* buf, std::size_t n, const sgd_params& h) {
    const float wd = float(h.weight_decay), mu = float(h.momentum), damp = float(1.0 - h.dampening),
                lr = float(h.lr), gs = float(h.grad_scale);
    const bool decay = h.weight_decay != 0, momentum = h.momentum != 0, first = h.first_step,
               nesterov = h.nesterov;
    for_each(
        n,
        [=] __device__(std::size_t i) {
            const float gi = __fmul_rn(grad[i], gs);
            float g = decay ? gi + wd * param[i] : gi;
            if (momentum) {
                buf[i] = first ? g : buf[i] * mu + damp * g;
                g = nesterov ? g + mu * buf[i] : buf[i];
            }
            param[i] += -lr * g;
        },
        "sgd_update");
}

// Inference: prepared weights, epilogues, attention ----------------------------------------------

void prepare_b(float* out, const float* B, std::size_t ldb, transpose tb, std::size_t K,
               std::size_t N) {
    const bool t = tb == transpose::yes;
    for_each(
        K * N,
        [=] __device__(std::size_t i) {
            const std::size_t k = i / N, j = i % N;
            out[i] = t ? B[j * ldb + k] : B[k * ldb + j];
        },
        "prepare_b");
}

void prepare_b(bf16* out, const float* B, std::size_t ldb, transpose tb, std::size_t K,
               std::size_t N) {
    const bool t = tb == transpose::yes;
    auto* o = reinterpret_cast<__nv_bfloat16*>(out);
    for_each(
        K * N,
        [=] __device__(std::size_t i) {
            const std::size_t k = i / N, j = i % N;
            o[i] = __float2bfloat16_rn(t ? B[j * ldb + k] : B[k * ldb + j]);
        },
        "prepare_b (bf16)");
}

void gemm_bf16_b(transpose ta, std::size_t M, std::size_t N, std::size_t K, float alpha,
                 const float* A, std::size_t lda, const bf16* B, std::size_t ldb, float beta,
                 float* C, std::size_t ldc) {
    gemm_bf16_impl(ta, transpose::no, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

void add_bias_residual(float* C, std::size_t ldc, const float* bias, const float* r,
                       std::size_t ldr, std::size_t M, std::size_t N) {
    for_each(
        M * N,
        [=] __device__(std::size_t i) {
            const std::size_t row = i / N, col = i % N;
            float c = C[row * ldc + col];
            if (bias) c += bias[col];
            if (r) c += r[row * ldr + col];
            C[row * ldc + col] = c;
        },
        "gemm_packed epilogue");
}

namespace {
// x rounded to bf16 and back (the products' operands of the bf16 path).
__device__ inline float round_bf16(float x) {
    return __bfloat162float(__float2bfloat16_rn(x));
}

// One query's attention by one warp (backends/reference's detail::attend): scores s_j = scale
// q·k_j + mask_j over `keys` keys (rows ld apart), p = softmax(s), out = Σ p_j v_j; zeros when
// every key is dropped. The lanes split the d features; pass 1 keeps the running max and sum,
// pass 2 the weighted values (with bf16: q, k, v and the normalized p rounded to bf16).
__device__ void attend_warp(float* out, const float* q, const float* k, const float* v,
                            std::size_t ld, const float* mask, float scale, std::size_t keys,
                            std::size_t d, bool bf16) {
    const int lane = threadIdx.x & 31;
    auto rd = [bf16](float x) { return bf16 ? round_bf16(x) : x; };
    auto score = [&](std::size_t j) {
        float dot = 0.0f;
        for (std::size_t c = lane; c < d; c += 32) dot += rd(q[c]) * rd(k[j * ld + c]);
        return scale * warp_sum(dot) + (mask ? mask[j] : 0.0f);
    };
    float mx = -INFINITY, sum = 0.0f;
    for (std::size_t j = 0; j < keys; ++j) {
        const float s = score(j);
        if (s == -INFINITY) continue;  // a dropped key weighs 0 (and -inf - -inf is NaN)
        if (s > mx) {
            sum = sum * expf(mx - s) + 1.0f;  // exp(-inf) = 0 on the first key
            mx = s;
        } else {
            sum += expf(s - mx);
        }
    }
    constexpr int max_per_lane = 8;  // d <= 256
    float acc[max_per_lane] = {};
    if (mx != -INFINITY)
        for (std::size_t j = 0; j < keys; ++j) {
            const float e = expf(score(j) - mx);
            const float p = bf16 ? round_bf16(e / sum) : e;
            for (int t = 0; t < max_per_lane; ++t) {
                const std::size_t c = lane + 32 * std::size_t(t);
                if (c < d) acc[t] += p * rd(v[j * ld + c]);
            }
        }
    for (int t = 0; t < max_per_lane; ++t) {
        const std::size_t c = lane + 32 * std::size_t(t);
        if (c < d) out[c] = mx == -INFINITY ? 0.0f : (bf16 ? acc[t] : acc[t] / sum);
    }
}

__global__ void attention_inference_kernel(float* out, std::size_t ldo, const float* q,
                                           std::size_t ldq, const float* k, const float* v,
                                           std::size_t ld, const float* key_mask, float scale,
                                           std::size_t Bn, std::size_t H, std::size_t Tq,
                                           std::size_t Tn, std::size_t d, bool causal, bool bf16) {
    const std::size_t w = std::size_t(blockIdx.x) * warps_per_block + (threadIdx.x >> 5);
    if (w >= Bn * H * Tq) return;
    const std::size_t i = w % Tq, h = (w / Tq) % H, b = w / (Tq * H);
    const std::size_t at = b * Tn * ld + h * d;  // the sequence's first key of head h
    attend_warp(out + (b * Tq + i) * ldo + h * d, q + (b * Tq + i) * ldq + h * d, k + at, v + at,
                ld, key_mask ? key_mask + b * Tn : nullptr, scale, causal ? i + 1 : Tn, d, bf16);
}

__global__ void attention_decode_kernel(float* out, const float* q, const float* k, const float* v,
                                        std::size_t cap, const float* key_mask, float scale,
                                        std::size_t Bn, std::size_t H, std::size_t group,
                                        std::size_t Ckv, std::size_t S, std::size_t d) {
    const std::size_t w = std::size_t(blockIdx.x) * warps_per_block + (threadIdx.x >> 5);
    if (w >= Bn * H) return;
    const std::size_t h = w % H, b = w / H;
    const std::size_t at = b * cap * Ckv + h / group * d;  // key/value head h / group
    attend_warp(out + (b * H + h) * d, q + (b * H + h) * d, k + at, v + at, Ckv,
                key_mask ? key_mask + b * S : nullptr, scale, S, d, false);
}

void attention_heads(float* out, std::size_t ldo, const float* q, std::size_t ldq, const float* k,
                     const float* v, std::size_t ld, const float* key_mask, float scale,
                     std::size_t Bn, std::size_t H, std::size_t Tq, std::size_t Tn, std::size_t d,
                     bool causal, bool bf16) {
    const char* what = "attention_inference";
    if (Tq > Tn)
        throw error(errc::shape_mismatch, what,
                    ftune::detail::cat(Tq, " queries per sequence but only ", Tn, " keys"));
    if (d > 256)
        throw error(errc::unsupported, what,
                    ftune::detail::cat("heads of ", d, " features (the CUDA kernel takes 256)"));
    const std::size_t queries = Bn * H * Tq;
    if (queries == 0) return;
    attention_inference_kernel<<<warp_row_blocks(queries, what), threads_per_block, 0,
                                 current_stream()>>>(out, ldo, q, ldq, k, v, ld, key_mask, scale,
                                                     Bn, H, Tq, Tn, d, causal, bf16);
    check_launch(what);
}
}  // namespace

void attention_inference(float* out, std::size_t ldo, const float* q, std::size_t ldq,
                         const float* k, const float* v, std::size_t ld, const float* key_mask,
                         float scale, std::size_t Bn, std::size_t H, std::size_t Tq, std::size_t Tn,
                         std::size_t d, bool causal) {
    attention_heads(out, ldo, q, ldq, k, v, ld, key_mask, scale, Bn, H, Tq, Tn, d, causal, false);
}

void attention_inference_bf16(float* out, std::size_t ldo, const float* q, std::size_t ldq,
                              const float* k, const float* v, std::size_t ld, const float* key_mask,
                              float scale, std::size_t Bn, std::size_t H, std::size_t Tq,
                              std::size_t Tn, std::size_t d, bool causal) {
    attention_heads(out, ldo, q, ldq, k, v, ld, key_mask, scale, Bn, H, Tq, Tn, d, causal, true);
}

void attention_decode(float* out, const float* q, const float* k, const float* v, std::size_t cap,
                      const float* key_mask, float scale, std::size_t Bn, std::size_t H,
                      std::size_t Hkv, std::size_t S, std::size_t d) {
    const char* what = "attention_decode";
    if (Hkv == 0 || H % Hkv != 0 || S > cap)
        throw error(errc::shape_mismatch, what,
                    ftune::detail::cat(Hkv, " key/value heads must divide ", H, " query heads; ", S,
                                       " positions of a cache of ", cap));
    if (d > 256)
        throw error(errc::unsupported, what,
                    ftune::detail::cat("heads of ", d, " features (the CUDA kernel takes 256)"));
    if (Bn * H == 0) return;
    attention_decode_kernel<<<warp_row_blocks(Bn * H, what), threads_per_block, 0,
                              current_stream()>>>(out, q, k, v, cap, key_mask, scale, Bn, H,
                                                  H / Hkv, Hkv * d, S, d);
    check_launch(what);
}

}  // namespace backends::cuda

FTUNE_NAMESPACE_END

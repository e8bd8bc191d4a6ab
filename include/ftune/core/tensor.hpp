// Non-owning views and owning buffers over row-major memory, with static or dynamic extents.
//
//   ftune::buffer<float, ftune::shape<ftune::dynamic, 384>> x(batch * seq, 384);  // owns memory
//   ftune::view<float, ftune::shape<ftune::dynamic, 384>> v = x.view();           // borrows it
//   v(3, 7) = 1.0f;
//
// Buffers allocate 64-byte aligned, zero-filled memory and never reallocate when resized to a
// size they already hold (the steady-state training step allocates nothing). Arrays of 2 MiB and
// more start on a 2 MiB boundary and ask Linux for transparent huge pages.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <span>
#include <string_view>
#include <type_traits>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "ftune/core/device.hpp"
#include "ftune/core/shape.hpp"

FTUNE_NAMESPACE_BEGIN

/// Alignment in bytes of every buffer ftune allocates (one cache line, one AVX-512 register).
inline constexpr std::size_t buffer_alignment = 64;

/// A non-owning, row-major view of `Shape::size()` elements of type T on `Device`.
template <class T, class Shape, device_tag Device = device::cpu>
class view {
    static_assert(is_shape_v<Shape>, "ftune: view<T, Shape>: Shape must be an ftune::shape<...>.");

  public:
    using element_type = T;                           ///< element type (may be const)
    using value_type = std::remove_cv_t<T>;           ///< element type without const
    using shape_type = Shape;                         ///< the shape type
    using device_type = Device;                       ///< where the memory lives
    static constexpr std::size_t rank = Shape::rank;  ///< number of axes

    /// An empty view (null data; dynamic extents 0).
    constexpr view() noexcept = default;
    /// A view of `s.size()` elements at `data`.
    constexpr view(T* data, const Shape& s) noexcept : data_(data), shape_(s) {}
    /// A view of the elements at `data` with the given extents (checked against static ones).
    template <class... I>
    requires(sizeof...(I) == rank && (std::is_integral_v<I> && ...)) constexpr view(T* data,
                                                                                    I... extents)
        : data_(data), shape_(extents...) {}

    /// Conversion to a view of const elements and/or less static extents (checked as for shapes).
    template <class U, class S2>
    requires(std::is_convertible_v<U (*)[], T (*)[]>&& std::is_constructible_v<
             Shape, const S2&>) constexpr explicit(!std::is_convertible_v<const S2&, Shape>)
        view(const view<U, S2, Device>& o)
        : data_(o.data()), shape_(o.shape()) {}

    /// Pointer to the first element.
    constexpr T* data() const noexcept { return data_; }
    /// The shape.
    constexpr const Shape& shape() const noexcept { return shape_; }
    /// Extent of axis i.
    constexpr std::size_t extent(std::size_t i) const noexcept { return shape_.extent(i); }
    /// Number of elements.
    constexpr std::size_t size() const noexcept { return shape_.size(); }
    /// True when the view has no element.
    constexpr bool empty() const noexcept { return size() == 0; }
    /// The elements as a span (host memory only).
    constexpr std::span<T> span() const noexcept requires(Device::host) { return {data_, size()}; }

    /// Element access by row-major index (one index per axis; unchecked; host memory only).
    template <class... I>
    requires(sizeof...(I) == rank && (std::is_integral_v<I> && ...) && Device::host) constexpr T&
    operator()(I... idx) const noexcept {
        const std::size_t ix[] = {static_cast<std::size_t>(idx)...};
        std::size_t off = 0;
        for (std::size_t a = 0; a < rank; ++a) off = off * shape_.extent(a) + ix[a];
        return data_[off];
    }

    /// The same memory seen with another shape of the same size; throws shape_mismatch otherwise.
    template <class S2>
    view<T, S2, Device> reshape(const S2& s) const {
        if (s.size() != size())
            throw error(errc::shape_mismatch, "view::reshape",
                        detail::cat("cannot view ", shape_.to_string(), " (", size(),
                                    " elements) as ", s.to_string(), " (", s.size(), " elements)"));
        return {data_, s};
    }

  private:
    T* data_ = nullptr;
    Shape shape_{};
};

/// A view with `Rank` dynamic extents.
template <class T, std::size_t Rank, device_tag Device = device::cpu>
using dynamic_view = view<T, dynamic_shape<Rank>, Device>;
/// A rank-1 view (N may be dynamic).
template <class T, std::size_t N = dynamic, device_tag Device = device::cpu>
using vector_view = view<T, shape<N>, Device>;
/// A rank-2 view (rows, cols), each static or dynamic.
template <class T, std::size_t R = dynamic, std::size_t C = dynamic,
          device_tag Device = device::cpu>
using matrix_view = view<T, shape<R, C>, Device>;

namespace detail {
/// Bytes of a transparent huge page (x86-64 and most arm64 Linux kernels).
inline constexpr std::size_t huge_page_bytes = std::size_t(2) << 20;

/// Whether large host arrays ask for transparent huge pages: on Linux unless the environment sets
/// FTUNE_HUGE_PAGES=0 (read once). A 4 KiB page holds 1,024 floats, so a forward streaming its
/// weights, or a training step its activations, misses the TLB every few hundred cycles, and
/// under virtualization each miss walks two page tables (docs/performance.md, "Huge pages").
inline bool huge_pages_wanted() noexcept {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    static const bool on = [] {
        const char* v = std::getenv("FTUNE_HUGE_PAGES");
        return !(v && std::string_view(v) == "0");
    }();
    return on;
#else
    return false;
#endif
}

/// The alignment of a host array of `bytes`: huge_page_bytes from that size up where huge pages
/// are wanted (so that its whole 2 MiB pages can be huge), else buffer_alignment.
inline std::size_t array_alignment(std::size_t bytes) noexcept {
    return bytes >= huge_page_bytes && huge_pages_wanted() ? huge_page_bytes : buffer_alignment;
}

/// Asks the kernel to back the whole 2 MiB pages of [p, p + bytes) (p 2 MiB-aligned) with huge
/// pages, where it has them on (THP "madvise" or "always"); a partial last page keeps 4 KiB
/// pages, so no memory is added. Best effort: a refusal leaves ordinary pages.
inline void advise_huge_pages(void* p, std::size_t bytes) noexcept {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (const std::size_t whole = bytes / huge_page_bytes * huge_page_bytes; whole && p)
        (void)::madvise(p, whole, MADV_HUGEPAGE);
#else
    (void)p, (void)bytes;
#endif
}

/// Deleter of aligned arrays allocated by aligned_alloc_array (owns = false: a borrowed array,
/// left alone).
struct aligned_delete {
    bool owns = true;                          ///< whether the array is freed
    std::size_t alignment = buffer_alignment;  ///< the alignment it was allocated with
    void operator()(void* p) const noexcept {
        if (owns) ::operator delete[](p, std::align_val_t{alignment});
    }
};
/// Allocates n zero-filled T's aligned to buffer_alignment, or to huge_page_bytes and backed by
/// huge pages from 2 MiB up (array_alignment; counted by allocation tests).
template <class T>
std::unique_ptr<T[], aligned_delete> aligned_alloc_array(std::size_t n) {
    static_assert(std::is_trivially_copyable_v<T>,
                  "ftune buffers hold trivially copyable elements");
    if (n == 0) return {};
    const std::size_t bytes = n * sizeof(T), alignment = array_alignment(bytes);
    void* p = ::operator new[](bytes, std::align_val_t{alignment});
    if (alignment == huge_page_bytes) advise_huge_pages(p, bytes);  // before the first touch
    std::memset(p, 0, bytes);
    return std::unique_ptr<T[], aligned_delete>(static_cast<T*>(p),
                                                aligned_delete{true, alignment});
}
}  // namespace detail

/// How the memory of a device that is not the host's is allocated, freed, copied and filled:
/// each such backend specializes it (device::cuda: backends/cuda/memory.hpp, with
/// FTUNE_WITH_CUDA). Host devices never use it (buffers allocate them with operator new).
template <class Device>
struct device_memory {
    static_assert(host_device<Device>,
                  "ftune: a buffer on a device whose memory is not the host's needs that "
                  "backend's device_memory<Device>; for device::cuda build with FTUNE_WITH_CUDA=1 "
                  "(CMake: -DFTUNE_WITH_CUDA=ON) and include ftune/ftune.hpp (docs/cuda.md)");
};

/// Copies n values from host memory to Device's memory (a plain copy on a host device; on
/// device::cuda, returns when src may be reused).
template <device_tag Device, class T>
void host_to_device(T* dst, const T* src, std::size_t n) {
    static_assert(std::is_trivially_copyable_v<T>, "ftune copies trivially copyable values");
    if constexpr (Device::host)
        std::copy_n(src, n, dst);
    else if (n)
        device_memory<Device>::from_host(dst, src, n * sizeof(T));
}
/// Sets the n values at p in Device's memory to v; on a host device, large arrays (the gradients
/// zeroed at every step) by the OpenMP threads in 64 KiB chunks.
template <device_tag Device, class T>
void fill_on(T* p, std::size_t n, T v) noexcept(Device::host) {
    if constexpr (!Device::host) {
        device_memory<Device>::fill(p, n, v);
    } else {
#if defined(_OPENMP)
        constexpr std::size_t chunk = 65536 / sizeof(T);
        if (n >= 16 * chunk && !omp_in_parallel() && omp_get_max_threads() > 1) {
            const auto chunks = static_cast<std::ptrdiff_t>((n + chunk - 1) / chunk);
#pragma omp parallel for schedule(static)
            for (std::ptrdiff_t c = 0; c < chunks; ++c) {
                const std::size_t i = std::size_t(c) * chunk;
                std::fill_n(p + i, std::min(chunk, n - i), v);
            }
            return;
        }
#endif
        std::fill_n(p, n, v);
    }
}
/// Copies n values from Device's memory to host memory (on device::cuda, after the work queued
/// before it).
template <device_tag Device, class T>
void device_to_host(T* dst, const T* src, std::size_t n) {
    static_assert(std::is_trivially_copyable_v<T>, "ftune copies trivially copyable values");
    if constexpr (Device::host)
        std::copy_n(src, n, dst);
    else if (n)
        device_memory<Device>::to_host(dst, src, n * sizeof(T));
}

namespace detail {
/// Deleter of a buffer's device memory (owns = false: a borrowed array, left alone).
template <class Device>
struct device_delete {
    bool owns = true;  ///< whether the array is freed
    void operator()(void* p) const noexcept {
        if (owns && p) device_memory<Device>::deallocate(p);
    }
};
/// The deleter of a buffer's storage on Device.
template <class Device>
using storage_delete = std::conditional_t<Device::host, aligned_delete, device_delete<Device>>;
/// n zero-filled T's on Device (64-byte aligned on the host).
template <class T, class Device>
std::unique_ptr<T[], storage_delete<Device>> alloc_storage(std::size_t n) {
    if constexpr (Device::host) {
        return aligned_alloc_array<T>(n);
    } else {
        static_assert(std::is_trivially_copyable_v<T>,
                      "ftune buffers hold trivially copyable elements");
        if (n == 0) return {};
        return std::unique_ptr<T[], storage_delete<Device>>(
            static_cast<T*>(device_memory<Device>::allocate(n * sizeof(T))));
    }
}
}  // namespace detail

/// An owning, zero-initialized row-major tensor on Device: 64-byte aligned host memory for
/// device::cpu and device::reference, the device's memory for others (device::cuda: from the
/// CUDA backend's caching allocator; element access and span() exist only on the host).
template <class T, class Shape, device_tag Device = device::cpu>
class buffer {
    using deleter = detail::storage_delete<Device>;
    static_assert(
        !std::is_const_v<T>,
        "ftune: a buffer owns mutable elements; use view<const T> to share them read-only.");

  public:
    using value_type = T;                             ///< element type
    using shape_type = Shape;                         ///< the shape type
    using device_type = Device;                       ///< where the memory lives
    static constexpr std::size_t rank = Shape::rank;  ///< number of axes

    /// An empty buffer (all-static shapes are allocated at once).
    buffer() { resize(Shape{}); }
    /// A zero-filled buffer of the given shape.
    explicit buffer(const Shape& s) { resize(s); }
    /// A zero-filled buffer with the given extents (checked against static ones).
    template <class... I>
    requires(sizeof...(I) == rank && rank > 0 &&
             (std::is_integral_v<I> && ...)) explicit buffer(I... extents) {
        resize(Shape(extents...));
    }
    /// Deep copy; a copy of a borrowed buffer borrows the same elements, and a copy of a released
    /// one has no storage either (copying an inference replica copies no weights).
    buffer(const buffer& o) : shape_(o.shape_) { copy_storage(o); }
    /// Deep copy assignment (borrowed and released buffers as for the copy constructor).
    buffer& operator=(const buffer& o) {
        if (this != &o) {
            if (!owns_storage() || !o.owns_storage() || !o.data_) drop();  // never write an alias
            shape_ = o.shape_;
            copy_storage(o);
        }
        return *this;
    }
    /// Move: takes the storage; the source is left empty (capacity 0) and may only be assigned
    /// to or destroyed (with an all-static shape its data() is null).
    buffer(buffer&& o) noexcept
        : data_(std::move(o.data_)), capacity_(std::exchange(o.capacity_, 0)), shape_(o.shape_) {
        o.shape_ = Shape{};
    }
    /// Move assignment (the source is left as after a move construction).
    buffer& operator=(buffer&& o) noexcept {
        if (this != &o) {
            data_ = std::move(o.data_);
            capacity_ = std::exchange(o.capacity_, 0);
            shape_ = o.shape_;
            o.shape_ = Shape{};
        }
        return *this;
    }

    /// Changes the shape; reallocates only when the new size exceeds the capacity. Contents are
    /// unspecified after a resize that changes the shape (zero after a reallocation).
    void resize(const Shape& s) {
        if (s.size() > capacity_) {
            data_ = detail::alloc_storage<T, Device>(s.size());
            capacity_ = s.size();
        }
        shape_ = s;
    }
    /// Sets every element to v (fill_on: large buffers, such as the gradients zeroed at every
    /// step, by the OpenMP threads).
    void fill(T v) noexcept(Device::host) { fill_on<Device>(data(), size(), v); }
    /// Makes this buffer an alias of `elements` (size() of them, not owned): they must outlive
    /// the buffer and its copies, which must then be only read (model replicas sharing one
    /// model's weights). A later resize() that grows it allocates its own storage again.
    void borrow(T* elements) noexcept {
        data_ = std::unique_ptr<T[], deleter>(elements, deleter{false});
        capacity_ = size();
    }
    /// Frees the storage and keeps the shape: data() is null and the elements may not be used
    /// until a resize() allocates again (gradients of a model that only runs inference).
    void release() noexcept { drop(); }
    /// Whether the buffer owns its storage (false after borrow()).
    bool owns_storage() const noexcept { return data_.get_deleter().owns; }

    /// Pointer to the first element.
    T* data() noexcept { return data_.get(); }
    /// Pointer to the first element.
    const T* data() const noexcept { return data_.get(); }
    /// The shape.
    const Shape& shape() const noexcept { return shape_; }
    /// Extent of axis i.
    std::size_t extent(std::size_t i) const noexcept { return shape_.extent(i); }
    /// Number of elements.
    std::size_t size() const noexcept { return shape_.size(); }
    /// Number of elements the allocation holds.
    std::size_t capacity() const noexcept { return capacity_; }
    /// The elements as a span (host memory only).
    std::span<T> span() noexcept requires(Device::host) { return {data(), size()}; }
    /// The elements as a span (host memory only).
    std::span<const T> span() const noexcept requires(Device::host) { return {data(), size()}; }
    /// A mutable view of the whole buffer.
    ftune::view<T, Shape, Device> view() noexcept { return {data(), shape_}; }
    /// A read-only view of the whole buffer.
    ftune::view<const T, Shape, Device> view() const noexcept { return {data(), shape_}; }
    /// Implicit conversion to a mutable view.
    operator ftune::view<T, Shape, Device>() noexcept { return view(); }
    /// Implicit conversion to a read-only view.
    operator ftune::view<const T, Shape, Device>() const noexcept { return view(); }
    /// Element access by row-major index (host memory only).
    template <class... I>
    T& operator()(I... idx) noexcept requires(Device::host) {
        return view()(idx...);
    }
    /// Element access by row-major index (host memory only).
    template <class... I>
    const T& operator()(I... idx) const noexcept requires(Device::host) {
        return view()(idx...);
    }

  private:
    // No storage, owned (an alias is let go).
    void drop() noexcept {
        data_ = std::unique_ptr<T[], deleter>();
        capacity_ = 0;
    }
    // The copy constructor's and assignment's storage (shape_ already set; data_ empty or owned).
    void copy_storage(const buffer& o) {
        if (!o.owns_storage()) {  // an alias: alias the same elements
            data_ = std::unique_ptr<T[], deleter>(o.data_.get(), deleter{false});
            capacity_ = o.capacity_;
        } else if (o.data_) {
            if (size() > capacity_) {
                data_ = detail::alloc_storage<T, Device>(size());
                capacity_ = size();
            }
            if constexpr (Device::host)
                std::copy_n(o.data(), size(), data());
            else
                device_memory<Device>::copy(data(), o.data(), size() * sizeof(T));
        }
    }

    std::unique_ptr<T[], deleter> data_;
    std::size_t capacity_ = 0;
    Shape shape_{};
};

FTUNE_NAMESPACE_END

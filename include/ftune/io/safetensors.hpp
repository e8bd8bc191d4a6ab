// io::safetensors_file: reads Hugging Face's safetensors format (model.safetensors), memory-mapped.
//
// The format: 8 bytes little-endian N, N bytes of JSON header {"name": {"dtype": "F32", "shape":
// [..], "data_offsets": [begin, end]}, "__metadata__": {...}}, then the data (offsets relative to
// its start). Every field is validated before any tensor is read: a malformed file is an
// ftune::error naming the file and the tensor, never an out-of-bounds read.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "ftune/core/concepts.hpp"
#include "ftune/core/error.hpp"
#include "ftune/io/atomic.hpp"
#include "ftune/io/mapped_file.hpp"

FTUNE_NAMESPACE_BEGIN
namespace io {

/// Element types of safetensors files that ftune reads.
enum class dtype { f64, f32, f16, bf16, i64, i32, i16, i8, u8, boolean };

/// The safetensors name of a dtype ("F32", ...).
constexpr std::string_view to_string(dtype t) noexcept {
    constexpr std::string_view names[] = {"F64", "F32", "F16", "BF16", "I64",
                                          "I32", "I16", "I8",  "U8",   "BOOL"};
    return names[static_cast<int>(t)];
}

/// Bytes per element of a dtype.
constexpr std::size_t size_of(dtype t) noexcept {
    constexpr std::size_t sizes[] = {8, 4, 2, 2, 8, 4, 2, 1, 1, 1};
    return sizes[static_cast<int>(t)];
}

/// One tensor of a safetensors file: name, element type, shape and where its bytes are.
struct tensor_info {
    std::string name;                ///< the tensor's name ("encoder.layer.0.output.dense.weight")
    dtype type = dtype::f32;         ///< element type
    std::vector<std::size_t> shape;  ///< extents (empty: a scalar)
    std::size_t begin = 0;           ///< first byte, relative to the data section
    std::size_t end = 0;             ///< one past the last byte

    /// Number of elements.
    std::size_t numel() const noexcept {
        std::size_t n = 1;
        for (auto e : shape) n *= e;
        return n;
    }
    /// The shape as "[64, 128]".
    std::string shape_string() const {
        std::string s = "[";
        for (std::size_t i = 0; i < shape.size(); ++i)
            s += (i ? ", " : "") + std::to_string(shape[i]);
        return s + "]";
    }
};

namespace detail {
/// float from IEEE half bits (subnormals, infinities and NaN included).
inline float half_to_float(std::uint16_t h) noexcept {
    const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
    std::uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    std::uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);  // inf / NaN
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (mant << 13);  // normal: rebias 15 -> 127
    } else if (mant == 0) {
        bits = sign;  // ±0
    } else {          // subnormal: normalize
        int e = -1;
        do {
            ++e;
            mant <<= 1;
        } while ((mant & 0x400u) == 0);
        bits = sign | (std::uint32_t(112 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
    return std::bit_cast<float>(bits);
}
/// float from bfloat16 bits (the upper half of a float).
inline float bf16_to_float(std::uint16_t h) noexcept {
    return std::bit_cast<float>(std::uint32_t(h) << 16);
}
/// Reads a little-endian unsigned integer of type U from unaligned bytes.
template <class U>
U load_le(const unsigned char* p) noexcept {
    U v = 0;
    for (std::size_t i = 0; i < sizeof(U); ++i) v |= U(p[i]) << (8 * i);
    return v;
}
}  // namespace detail

/// A safetensors file opened for reading (memory-mapped where the platform allows).
class safetensors_file {
  public:
    /// Opens and validates `path`; throws ftune::error (io or parse) naming the file and the
    /// problem.
    explicit safetensors_file(const std::filesystem::path& path) : file_(path) { parse_header(); }
    /// Validates safetensors bytes already in memory (an embedded model, a download buffer),
    /// read in place: `bytes` must outlive the object. `name` stands for the path in messages.
    safetensors_file(std::span<const unsigned char> bytes, std::string name)
        : file_(bytes, std::move(name)) {
        parse_header();
    }

    /// The file's path.
    const std::string& path() const noexcept { return file_.path(); }
    /// Every tensor, in the order of their data offsets.
    const std::vector<tensor_info>& tensors() const noexcept { return tensors_; }
    /// The "__metadata__" string map (empty when absent).
    const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
    /// The tensor called `name`, or nullptr.
    const tensor_info* find(std::string_view name) const noexcept {
        const auto it = index_.find(std::string(name));
        return it == index_.end() ? nullptr : &tensors_[it->second];
    }
    /// The raw little-endian bytes of a tensor.
    std::span<const unsigned char> bytes(const tensor_info& t) const noexcept {
        return {data_ + t.begin, t.end - t.begin};
    }

    /// Converts the floating-point tensor `t` into out (out.size() == t.numel()). F64, F32, F16
    /// and BF16 are read; another dtype, or a size mismatch, throws naming the tensor.
    template <scalar T>
    void read(const tensor_info& t, std::span<T> out) const {
        if (out.size() != t.numel())
            throw error(
                errc::shape_mismatch, context(t),
                ftune::detail::cat("the file holds ", t.numel(), " elements ", t.shape_string(),
                                   " but ", out.size(), " were asked for"));
        const unsigned char* p = data_ + t.begin;
        const std::size_t n = t.numel();
        switch (t.type) {
            case dtype::f64:
                for (std::size_t i = 0; i < n; ++i)
                    out[i] = T(std::bit_cast<double>(detail::load_le<std::uint64_t>(p + 8 * i)));
                break;
            case dtype::f32:
                if constexpr (std::is_same_v<T, float> &&
                              std::endian::native == std::endian::little)
                    std::memcpy(out.data(), p, n * sizeof(float));
                else
                    for (std::size_t i = 0; i < n; ++i)
                        out[i] = T(std::bit_cast<float>(detail::load_le<std::uint32_t>(p + 4 * i)));
                break;
            case dtype::f16:
                for (std::size_t i = 0; i < n; ++i)
                    out[i] = T(detail::half_to_float(detail::load_le<std::uint16_t>(p + 2 * i)));
                break;
            case dtype::bf16:
                for (std::size_t i = 0; i < n; ++i)
                    out[i] = T(detail::bf16_to_float(detail::load_le<std::uint16_t>(p + 2 * i)));
                break;
            default:
                throw error(errc::unsupported, context(t),
                            ftune::detail::cat("dtype ", to_string(t.type),
                                               " is not a floating-point type ftune reads "
                                               "(F64, F32, F16, BF16)"));
        }
    }

    /// read() into a new vector.
    template <scalar T>
    std::vector<T> read(const tensor_info& t) const {
        std::vector<T> v(t.numel());
        read(t, std::span<T>(v));
        return v;
    }

    /// The tensor called `name` (throws naming it when absent).
    const tensor_info& at(std::string_view name) const {
        if (const auto* t = find(name)) return *t;
        throw error(errc::out_of_range, path(),
                    ftune::detail::cat("no tensor named \"", name, "\" in the file"));
    }

  private:
    std::string context(const tensor_info& t) const { return path() + ": tensor " + t.name; }

    [[noreturn]] void bad(const std::string& what) const { throw error(errc::parse, path(), what); }

    static constexpr std::uint64_t max_header_bytes = 100'000'000;  // safetensors' limit
    void parse_header() {
        const unsigned char* base = file_.data();
        const std::size_t size = file_.size();
        if (size < 8)
            bad(ftune::detail::cat("file of ", size,
                                   " bytes is too short for a safetensors header (8-byte length "
                                   "+ JSON); is it a safetensors file?"));
        const std::uint64_t n = detail::load_le<std::uint64_t>(base);
        if (n > size - 8)
            bad(ftune::detail::cat("header length ", n, " runs past the end of the ", size,
                                   "-byte file (truncated download?)"));
        if (n > max_header_bytes)  // the format's own limit, against a hostile parse
            bad(ftune::detail::cat("header of ", n, " bytes exceeds the format's limit of ",
                                   max_header_bytes, " (100 MB)"));
        const auto* h = reinterpret_cast<const char*>(base + 8);
        nlohmann::json j;
        try {
            j = nlohmann::json::parse(h, h + n);
        } catch (const nlohmann::json::exception& e) {
            bad(ftune::detail::cat("the JSON header is malformed: ", e.what()));
        }
        if (!j.is_object()) bad("the JSON header is not an object");
        data_ = base + 8 + n;
        const std::size_t data_size = size - 8 - n;
        for (auto it = j.begin(); it != j.end(); ++it) {
            if (it.key() == "__metadata__") {
                if (!it->is_object()) bad("__metadata__ is not an object");
                for (auto m = it->begin(); m != it->end(); ++m)
                    if (m->is_string()) metadata_[m.key()] = m->get<std::string>();
                continue;
            }
            tensors_.push_back(parse_entry(it.key(), *it, data_size));
        }
        // by offset, an empty tensor before a tensor that starts where it lies (frozen
        // parameters' empty optimizer moments sit between full ones)
        std::sort(tensors_.begin(), tensors_.end(), [](const tensor_info& a, const tensor_info& b) {
            return a.begin < b.begin || (a.begin == b.begin && a.end < b.end);
        });
        for (std::size_t i = 0; i < tensors_.size(); ++i) {
            if (i > 0 && tensors_[i].begin < tensors_[i - 1].end)
                bad(ftune::detail::cat("tensors ", tensors_[i - 1].name, " and ", tensors_[i].name,
                                       " overlap"));
            index_[tensors_[i].name] = i;
        }
    }

    tensor_info parse_entry(const std::string& name, const nlohmann::json& e,
                            std::size_t data_size) const {
        auto fail = [&](const std::string& what) -> tensor_info {
            throw error(errc::parse, path() + ": tensor " + name, what);
        };
        tensor_info t;
        t.name = name;
        if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") ||
            !e.contains("data_offsets"))
            return fail("expected {\"dtype\", \"shape\", \"data_offsets\"}");
        const auto& d = e["dtype"];
        if (!d.is_string()) return fail("dtype is not a string");
        const std::string ds = d.get<std::string>();
        bool known = false;
        for (int k = 0; k <= static_cast<int>(dtype::boolean); ++k)
            if (to_string(static_cast<dtype>(k)) == ds)
                t.type = static_cast<dtype>(k), known = true;
        if (!known) return fail("unknown dtype \"" + ds + "\"");
        if (!e["shape"].is_array()) return fail("shape is not an array");
        std::size_t numel = 1;
        for (const auto& x : e["shape"]) {
            if (!x.is_number_unsigned())
                return fail("shape holds a non-integer or negative extent");
            const auto v = x.get<std::uint64_t>();
            if (v != 0 && numel > (std::uint64_t(1) << 48) / v) return fail("shape is too large");
            numel *= v;
            t.shape.push_back(v);
        }
        const auto& o = e["data_offsets"];
        if (!o.is_array() || o.size() != 2 || !o[0].is_number_unsigned() ||
            !o[1].is_number_unsigned())
            return fail("data_offsets is not [begin, end]");
        t.begin = o[0].get<std::uint64_t>();
        t.end = o[1].get<std::uint64_t>();
        if (t.begin > t.end || t.end > data_size)
            return fail(ftune::detail::cat("data_offsets [", t.begin, ", ", t.end,
                                           "] lie outside the ", data_size,
                                           "-byte data section (truncated file?)"));
        if (t.end - t.begin != numel * size_of(t.type))
            return fail(ftune::detail::cat("shape ", t.shape_string(), " of ", to_string(t.type),
                                           " needs ", numel * size_of(t.type),
                                           " bytes but "
                                           "data_offsets span ",
                                           t.end - t.begin));
        return t;
    }

    mapped_file file_;                     // the whole file
    const unsigned char* data_ = nullptr;  // the data section
    std::vector<tensor_info> tensors_;
    std::map<std::string, std::size_t> index_;
    std::map<std::string, std::string> metadata_;
};

/// One tensor to write: name, shape and float32 values.
struct tensor_to_write {
    std::string name;                ///< the tensor's name in the file
    std::vector<std::size_t> shape;  ///< extents (their product is values.size())
    std::span<const float> values;   ///< the data, written as F32
};

/// Writes a safetensors file atomically (write_file_atomic: a crash leaves the old file or the
/// new one, never half of one). Throws ftune::error (io) naming the path.
inline void write_safetensors(const std::filesystem::path& path,
                              const std::vector<tensor_to_write>& tensors,
                              const std::map<std::string, std::string>& metadata = {}) {
    nlohmann::json header = nlohmann::json::object();
    std::size_t offset = 0;
    for (const auto& t : tensors) {
        std::size_t n = 1;
        for (auto e : t.shape) n *= e;
        if (n != t.values.size())
            throw error(errc::shape_mismatch, path.string() + ": tensor " + t.name,
                        ftune::detail::cat("shape holds ", n, " values but ", t.values.size(),
                                           " were given"));
        if (header.contains(t.name))
            throw error(errc::invalid_argument, path.string() + ": tensor " + t.name,
                        "the name is given twice");
        header[t.name] = {
            {"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + 4 * n}}};
        offset += 4 * n;
    }
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::string h = header.dump();
    h.append((8 - h.size() % 8) % 8, ' ');  // the data starts 8-byte aligned, as Hugging Face's
    write_file_atomic(path, [&](std::ostream& out) {
        const std::uint64_t n = h.size();
        for (int i = 0; i < 8; ++i) out.put(char((n >> (8 * i)) & 0xff));
        out.write(h.data(), std::streamsize(h.size()));
        for (const auto& t : tensors) {
            if constexpr (std::endian::native == std::endian::little) {
                out.write(reinterpret_cast<const char*>(t.values.data()),
                          std::streamsize(t.values.size() * sizeof(float)));
            } else {
                for (float v : t.values) {
                    const auto b = std::bit_cast<std::uint32_t>(v);
                    for (int i = 0; i < 4; ++i) out.put(char((b >> (8 * i)) & 0xff));
                }
            }
        }
    });
}

}  // namespace io
FTUNE_NAMESPACE_END

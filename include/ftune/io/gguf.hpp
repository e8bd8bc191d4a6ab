// io::gguf_file: reads llama.cpp's GGUF checkpoints (versions 2 and 3, little-endian),
// memory-mapped, and dequantizes their tensors to float.
//
// The format: "GGUF", version (u32), tensor count (u64), metadata count (u64); the metadata as
// key (u64 length + bytes), value type (u32), value (numbers, bool, string, or an array: element
// type u32, count u64, elements); the tensor infos as name, number of dimensions (u32), the
// dimensions innermost first (u64 each), ggml type (u32), offset (u64) into the data; then,
// aligned to general.alignment (default 32), the data. Every count, length, offset and size is
// checked against the file before it is used: a malformed file is an ftune::error naming the file
// and the byte or tensor, never an out-of-bounds read.
//
// Types read: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 (blocks of 32 values) and Q4_K, Q5_K,
// Q6_K (super-blocks of 256), dequantized as ggml does.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "ftune/io/mapped_file.hpp"
#include "ftune/io/safetensors.hpp"

FTUNE_NAMESPACE_BEGIN
namespace io {

/// ggml's tensor types (the numbers GGUF stores).
enum class ggml_type : std::uint32_t {
    f32 = 0,    ///< float
    f16 = 1,    ///< IEEE half
    q4_0 = 2,   ///< 32 values: half scale d, 4-bit q; x = (q - 8) d
    q4_1 = 3,   ///< 32 values: half d and min m, 4-bit q; x = q d + m
    q5_0 = 6,   ///< 32 values: half d, 5-bit q; x = (q - 16) d
    q5_1 = 7,   ///< 32 values: half d and m, 5-bit q; x = q d + m
    q8_0 = 8,   ///< 32 values: half d, 8-bit signed q; x = q d
    q8_1 = 9,   ///< (not read)
    q2_k = 10,  ///< (not read)
    q3_k = 11,  ///< (not read)
    q4_k = 12,  ///< 256 values in 8 groups: 6-bit group scales and mins, 4-bit q
    q5_k = 13,  ///< 256 values in 8 groups: 6-bit group scales and mins, 5-bit q
    q6_k = 14,  ///< 256 values in 16 groups: 8-bit group scales, 6-bit q
    bf16 = 30,  ///< bfloat16
};

/// Values per block and bytes per block of a ggml type ftune reads; {0, 0} for the others.
struct ggml_block {
    std::size_t values;  ///< values per block
    std::size_t bytes;   ///< bytes per block
};

/// The block layout of type t ({0, 0}: a type ftune does not read).
constexpr ggml_block block_of(ggml_type t) noexcept {
    switch (t) {
        case ggml_type::f32:
            return {1, 4};
        case ggml_type::f16:
        case ggml_type::bf16:
            return {1, 2};
        case ggml_type::q4_0:
            return {32, 18};
        case ggml_type::q4_1:
            return {32, 20};
        case ggml_type::q5_0:
            return {32, 22};
        case ggml_type::q5_1:
            return {32, 24};
        case ggml_type::q8_0:
            return {32, 34};
        case ggml_type::q4_k:
            return {256, 144};
        case ggml_type::q5_k:
            return {256, 176};
        case ggml_type::q6_k:
            return {256, 210};
        default:
            return {0, 0};
    }
}

/// ggml's name of a type ("Q4_1"), or "type N" for one ftune does not know.
inline std::string ggml_type_name(ggml_type t) {
    switch (t) {
        case ggml_type::f32:
            return "F32";
        case ggml_type::f16:
            return "F16";
        case ggml_type::q4_0:
            return "Q4_0";
        case ggml_type::q4_1:
            return "Q4_1";
        case ggml_type::q5_0:
            return "Q5_0";
        case ggml_type::q5_1:
            return "Q5_1";
        case ggml_type::q8_0:
            return "Q8_0";
        case ggml_type::q8_1:
            return "Q8_1";
        case ggml_type::q2_k:
            return "Q2_K";
        case ggml_type::q3_k:
            return "Q3_K";
        case ggml_type::q4_k:
            return "Q4_K";
        case ggml_type::q5_k:
            return "Q5_K";
        case ggml_type::q6_k:
            return "Q6_K";
        case ggml_type::bf16:
            return "BF16";
    }
    return "type " + std::to_string(std::uint32_t(t));
}

/// One tensor of a GGUF file.
struct gguf_tensor {
    std::string name;                 ///< "blk.0.attn_q.weight"
    ggml_type type = ggml_type::f32;  ///< element or block type
    std::vector<std::size_t> shape;   ///< extents outermost first, as PyTorch writes them (GGUF
                                      ///< stores them innermost first: (in, out) for a weight)
    std::size_t offset = 0;           ///< first byte, from the start of the file
    std::size_t bytes = 0;            ///< bytes of data

    /// Number of values.
    std::size_t numel() const noexcept {
        std::size_t n = 1;
        for (auto e : shape) n *= e;
        return n;
    }
};

namespace detail {

/// Reads a GGUF header field by field, each read checked against the end of the file.
class gguf_cursor {
  public:
    /// A cursor at the start of f.
    explicit gguf_cursor(const mapped_file& f) : f_(f) {}

    /// The byte offset of the next read.
    std::size_t at() const noexcept { return at_; }
    /// Bytes left after the cursor.
    std::size_t left() const noexcept { return f_.size() - at_; }

    /// Throws parse naming the file, the offset and `what`.
    [[noreturn]] void bad(const std::string& what) const {
        throw error(errc::parse, f_.path(), ftune::detail::cat("at byte ", at_, ": ", what));
    }
    /// Throws unless k more bytes are there.
    void need(std::size_t k, std::string_view what) const {
        if (k > left())
            bad(ftune::detail::cat(what, " needs ", k, " bytes but the ", f_.size(),
                                   "-byte file ends first (truncated download?)"));
    }
    /// A little-endian integer of type U.
    template <class U>
    U get(std::string_view what) {
        need(sizeof(U), what);
        const U v = load_le<U>(f_.data() + at_);
        at_ += sizeof(U);
        return v;
    }
    /// A GGUF string: u64 length, then the bytes.
    std::string string(std::string_view what) {
        const auto n = get<std::uint64_t>(what);
        need(n, what);
        std::string s(reinterpret_cast<const char*>(f_.data() + at_), std::size_t(n));
        at_ += std::size_t(n);
        return s;
    }

  private:
    const mapped_file& f_;
    std::size_t at_ = 0;
};

/// half d at p (ggml's scale fields).
inline float gguf_half(const unsigned char* p) noexcept {
    return half_to_float(load_le<std::uint16_t>(p));
}

/// The 6-bit scale and min of group j of a K-quant super-block (12 bytes of packed fields):
/// groups 0..3 in the low 6 bits of bytes j and j + 4; groups 4..7 from the low and high
/// nibbles of bytes j + 4, with their top 2 bits in the spare bits of bytes j - 4 and j.
inline void k_scale_min(std::size_t j, const unsigned char* q, int& scale, int& min) noexcept {
    if (j < 4) {
        scale = q[j] & 63;
        min = q[j + 4] & 63;
    } else {
        scale = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        min = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/// Dequantizes `blocks` blocks of type t at p into y (blocks × values floats).
inline void dequantize(ggml_type t, const unsigned char* p, std::size_t blocks, float* y) {
    const std::size_t bytes = block_of(t).bytes;
    for (std::size_t b = 0; b < blocks; ++b, p += bytes) {
        switch (t) {
            case ggml_type::f32:
                *y++ = std::bit_cast<float>(load_le<std::uint32_t>(p));
                break;
            case ggml_type::f16:
                *y++ = gguf_half(p);
                break;
            case ggml_type::bf16:
                *y++ = bf16_to_float(load_le<std::uint16_t>(p));
                break;
            case ggml_type::q4_0: {  // d, 16 bytes: value j in the low nibble, j + 16 in the high
                const float d = gguf_half(p);
                const unsigned char* q = p + 2;
                for (std::size_t j = 0; j < 16; ++j) {
                    y[j] = float(int(q[j] & 0xF) - 8) * d;
                    y[j + 16] = float(int(q[j] >> 4) - 8) * d;
                }
                y += 32;
                break;
            }
            case ggml_type::q4_1: {  // d, m, 16 bytes of nibbles
                const float d = gguf_half(p), m = gguf_half(p + 2);
                const unsigned char* q = p + 4;
                for (std::size_t j = 0; j < 16; ++j) {
                    y[j] = float(q[j] & 0xF) * d + m;
                    y[j + 16] = float(q[j] >> 4) * d + m;
                }
                y += 32;
                break;
            }
            case ggml_type::q5_0:
            case ggml_type::q5_1: {  // d [, m], 32 fifth bits (u32), 16 bytes of nibbles
                const bool with_min = t == ggml_type::q5_1;
                const float d = gguf_half(p), m = with_min ? gguf_half(p + 2) : 0.0f;
                const unsigned char* h = p + (with_min ? 4 : 2);
                const std::uint32_t high = load_le<std::uint32_t>(h);
                const unsigned char* q = h + 4;
                const int offset = with_min ? 0 : 16;
                for (std::size_t j = 0; j < 16; ++j) {
                    const int lo = (q[j] & 0xF) | int(((high >> j) & 1u) << 4);
                    const int hi = (q[j] >> 4) | int(((high >> (j + 16)) & 1u) << 4);
                    y[j] = float(lo - offset) * d + m;
                    y[j + 16] = float(hi - offset) * d + m;
                }
                y += 32;
                break;
            }
            case ggml_type::q8_0: {  // d, 32 signed bytes
                const float d = gguf_half(p);
                for (std::size_t j = 0; j < 32; ++j)
                    y[j] = float(static_cast<std::int8_t>(p[2 + j])) * d;
                y += 32;
                break;
            }
            case ggml_type::q4_k:
            case ggml_type::q5_k: {
                // d, dmin, 12 bytes of group scales and mins, [32 bytes of fifth bits,] 128 bytes
                // of nibbles: 4 chunks of 64 values, low nibbles then high nibbles of 32 bytes
                const bool five = t == ggml_type::q5_k;
                const float d = gguf_half(p), dmin = gguf_half(p + 2);
                const unsigned char* scales = p + 4;
                const unsigned char* high = p + 16;
                const unsigned char* q = p + (five ? 48 : 16);
                for (std::size_t chunk = 0; chunk < 4; ++chunk, q += 32) {
                    int sc = 0, mn = 0;
                    k_scale_min(2 * chunk, scales, sc, mn);
                    const float d1 = d * float(sc), m1 = dmin * float(mn);
                    k_scale_min(2 * chunk + 1, scales, sc, mn);
                    const float d2 = d * float(sc), m2 = dmin * float(mn);
                    const unsigned bit_lo = 1u << (2 * chunk), bit_hi = 2u << (2 * chunk);
                    for (std::size_t l = 0; l < 32; ++l) {
                        const int lo = (q[l] & 0xF) + (five && (high[l] & bit_lo) ? 16 : 0);
                        const int hi = (q[l] >> 4) + (five && (high[l] & bit_hi) ? 16 : 0);
                        y[l] = d1 * float(lo) - m1;
                        y[l + 32] = d2 * float(hi) - m2;
                    }
                    y += 64;
                }
                break;
            }
            case ggml_type::q6_k: {
                // 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 signed group scales, d:
                // two halves of 128 values, each 4 runs of 32 sharing the low/high bytes
                const unsigned char* ql = p;
                const unsigned char* qh = p + 128;
                const auto* sc = reinterpret_cast<const std::int8_t*>(p + 192);
                const float d = gguf_half(p + 208);
                for (std::size_t half = 0; half < 2; ++half, ql += 64, qh += 32, sc += 8) {
                    for (std::size_t l = 0; l < 32; ++l) {
                        const std::size_t g = l / 16;
                        const int q1 = int((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                        const int q2 = int((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                        const int q3 = int((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                        const int q4 = int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                        y[l] = d * float(sc[g]) * float(q1);
                        y[l + 32] = d * float(sc[g + 2]) * float(q2);
                        y[l + 64] = d * float(sc[g + 4]) * float(q3);
                        y[l + 96] = d * float(sc[g + 6]) * float(q4);
                    }
                    y += 128;
                }
                break;
            }
            default:
                throw error(errc::unsupported, ggml_type_name(t), "not a type ftune dequantizes");
        }
    }
}

}  // namespace detail

/// A GGUF file opened for reading: its metadata, its tensors, their values as float.
class gguf_file {
  public:
    /// Opens and validates `path`; throws ftune::error (io, parse or unsupported) naming the file
    /// and the problem.
    explicit gguf_file(const std::filesystem::path& path) : file_(path) { parse(); }
    /// Validates GGUF bytes already in memory (they must outlive the object); `name` stands for
    /// the path in messages.
    gguf_file(std::span<const unsigned char> bytes, std::string name)
        : file_(bytes, std::move(name)) {
        parse();
    }

    /// The file's path.
    const std::string& path() const noexcept { return file_.path(); }
    /// The format version (2 or 3).
    std::uint32_t version() const noexcept { return version_; }
    /// Every metadata key and its value (numbers, bools, strings, arrays), e.g.
    /// "general.architecture": "llama", "llama.block_count": 30, "tokenizer.ggml.tokens": [...].
    const nlohmann::json& metadata() const noexcept { return metadata_; }
    /// Every tensor, in the file's order.
    const std::vector<gguf_tensor>& tensors() const noexcept { return tensors_; }
    /// The tensor called `name`, or nullptr.
    const gguf_tensor* find(std::string_view name) const {
        const auto it = index_.find(std::string(name));
        return it == index_.end() ? nullptr : &tensors_[it->second];
    }
    /// The tensor called `name` (throws naming it when absent).
    const gguf_tensor& at(std::string_view name) const {
        if (const auto* t = find(name)) return *t;
        throw error(errc::out_of_range, path(),
                    ftune::detail::cat("no tensor named \"", name, "\" in the file"));
    }
    /// The raw bytes of a tensor.
    std::span<const unsigned char> bytes(const gguf_tensor& t) const noexcept {
        return file_.bytes().subspan(t.offset, t.bytes);
    }

    /// Dequantizes tensor t into out (out.size() == t.numel()), in PyTorch's order (the last
    /// extent varies fastest).
    template <scalar T>
    void read(const gguf_tensor& t, std::span<T> out) const {
        if (out.size() != t.numel())
            throw error(errc::shape_mismatch, path() + ": tensor " + t.name,
                        ftune::detail::cat("the file holds ", t.numel(), " values but ", out.size(),
                                           " were asked for"));
        const std::size_t per = block_of(t.type).values;
        const std::size_t blocks = t.numel() / per;
        const unsigned char* p = file_.data() + t.offset;
        if constexpr (std::is_same_v<T, float>) {
            detail::dequantize(t.type, p, blocks, out.data());
        } else {  // through float, a row of blocks at a time
            std::vector<float> tmp(per * 256);
            for (std::size_t b = 0; b < blocks; b += 256) {
                const std::size_t n = std::min<std::size_t>(256, blocks - b);
                detail::dequantize(t.type, p + b * block_of(t.type).bytes, n, tmp.data());
                std::copy_n(tmp.data(), n * per, out.data() + b * per);
            }
        }
    }
    /// read() into a new vector.
    template <scalar T = float>
    std::vector<T> read(const gguf_tensor& t) const {
        std::vector<T> v(t.numel());
        read(t, std::span<T>(v));
        return v;
    }

  private:
    static constexpr std::uint32_t magic = 0x46554747;  // "GGUF" read little-endian
    static constexpr std::size_t max_dims = 4;          // GGML_MAX_DIMS
    static constexpr int max_depth = 3;                 // arrays of arrays of arrays at most

    // metadata value types
    enum vtype : std::uint32_t {
        u8 = 0,
        i8,
        u16,
        i16,
        u32,
        i32,
        f32,
        boolean,
        string,
        array,
        u64,
        i64,
        f64
    };

    // one metadata value of type `type` at the cursor
    static nlohmann::json value(detail::gguf_cursor& c, std::uint32_t type, const std::string& key,
                                int depth) {
        switch (type) {
            case u8:
                return c.get<std::uint8_t>(key);
            case i8:
                return static_cast<std::int8_t>(c.get<std::uint8_t>(key));
            case u16:
                return c.get<std::uint16_t>(key);
            case i16:
                return static_cast<std::int16_t>(c.get<std::uint16_t>(key));
            case u32:
                return c.get<std::uint32_t>(key);
            case i32:
                return static_cast<std::int32_t>(c.get<std::uint32_t>(key));
            case u64:
                return c.get<std::uint64_t>(key);
            case i64:
                return static_cast<std::int64_t>(c.get<std::uint64_t>(key));
            case f32:
                return std::bit_cast<float>(c.get<std::uint32_t>(key));
            case f64:
                return std::bit_cast<double>(c.get<std::uint64_t>(key));
            case boolean: {
                const auto b = c.get<std::uint8_t>(key);
                if (b > 1) c.bad(ftune::detail::cat(key, ": a bool holds ", int(b)));
                return b == 1;
            }
            case string:
                return c.string(key);
            case array: {
                if (depth >= max_depth)
                    c.bad(key + ": arrays nested deeper than " + std::to_string(max_depth));
                const auto element = c.get<std::uint32_t>(key);
                const auto n = c.get<std::uint64_t>(key);
                const std::size_t least = min_size(element);  // bytes each element takes at least
                if (least == 0)
                    c.bad(ftune::detail::cat(key, ": array of unknown value type ", element));
                if (n > c.left() / least)
                    c.bad(ftune::detail::cat(key, ": ", n, " elements cannot fit in the ", c.left(),
                                             " bytes left"));
                nlohmann::json a = nlohmann::json::array();
                a.get_ref<nlohmann::json::array_t&>().reserve(std::size_t(n));
                for (std::uint64_t i = 0; i < n; ++i)
                    a.push_back(value(c, element, key, depth + 1));
                return a;
            }
            default:
                c.bad(ftune::detail::cat(key, ": unknown value type ", type));
        }
    }
    // the fewest bytes a value of type t takes (0: unknown type)
    static std::size_t min_size(std::uint32_t t) noexcept {
        switch (t) {
            case u8:
            case i8:
            case boolean:
                return 1;
            case u16:
            case i16:
                return 2;
            case u32:
            case i32:
            case f32:
                return 4;
            case u64:
            case i64:
            case f64:
            case string:  // its length
                return 8;
            case array:  // element type and count
                return 12;
            default:
                return 0;
        }
    }

    void parse() {
        detail::gguf_cursor c(file_);
        if (file_.size() < 4 || c.get<std::uint32_t>("magic") != magic)
            c.bad("not a GGUF file (it does not start with \"GGUF\")");
        version_ = c.get<std::uint32_t>("version");
        if (version_ != 2 && version_ != 3)
            c.bad(ftune::detail::cat("version ", version_,
                                     ": ftune reads little-endian GGUF versions 2 and 3"));
        const auto n_tensors = c.get<std::uint64_t>("tensor count");
        const auto n_kv = c.get<std::uint64_t>("metadata count");
        if (n_kv > c.left() / (8 + 4 + 1))
            c.bad(ftune::detail::cat(n_kv, " metadata entries cannot fit in the file"));
        if (n_tensors > c.left() / (8 + 4 + 4 + 8))
            c.bad(ftune::detail::cat(n_tensors, " tensors cannot fit in the file"));
        metadata_ = nlohmann::json::object();
        for (std::uint64_t i = 0; i < n_kv; ++i) {
            std::string key = c.string("metadata key");
            if (metadata_.contains(key)) c.bad("metadata key \"" + key + "\" appears twice");
            const auto type = c.get<std::uint32_t>(key);
            metadata_[key] = value(c, type, key, 0);
        }
        std::size_t alignment = 32;
        if (metadata_.contains("general.alignment")) {
            const auto& a = metadata_["general.alignment"];
            if (!a.is_number_unsigned() || a.get<std::uint64_t>() == 0 ||
                (a.get<std::uint64_t>() & (a.get<std::uint64_t>() - 1)) != 0 ||
                a.get<std::uint64_t>() > 65536)
                c.bad("general.alignment must be a power of two up to 65536, not " + a.dump());
            alignment = a.get<std::size_t>();
        }
        std::vector<std::uint64_t> offsets;
        for (std::uint64_t i = 0; i < n_tensors; ++i) {
            gguf_tensor t;
            t.name = c.string("tensor name");
            const auto dims = c.get<std::uint32_t>(t.name);
            if (dims == 0 || dims > max_dims)
                c.bad(ftune::detail::cat(t.name, ": ", dims, " dimensions (1 to ", max_dims, ")"));
            std::uint64_t numel = 1;
            t.shape.resize(dims);
            for (std::uint32_t d = 0; d < dims; ++d) {
                const auto e = c.get<std::uint64_t>(t.name);
                if (e == 0 || e > (std::uint64_t(1) << 40) || numel > (std::uint64_t(1) << 48) / e)
                    c.bad(ftune::detail::cat(t.name, ": extent ", e,
                                             " is zero or beyond any real model"));
                numel *= e;
                t.shape[dims - 1 - d] = std::size_t(e);  // innermost first in the file
            }
            t.type = static_cast<ggml_type>(c.get<std::uint32_t>(t.name));
            const auto block = block_of(t.type);
            if (block.values == 0)
                throw error(errc::unsupported, path() + ": tensor " + t.name,
                            ggml_type_name(t.type) +
                                ": ftune dequantizes F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, "
                                "Q5_1, Q4_K, Q5_K and Q6_K (re-quantize the model with one of "
                                "them, e.g. llama.cpp's llama-quantize ... Q8_0)");
            if (t.shape.back() % block.values != 0)
                c.bad(ftune::detail::cat(t.name, ": rows of ", t.shape.back(), " values are not ",
                                         "whole ", ggml_type_name(t.type), " blocks of ",
                                         block.values));
            t.bytes = std::size_t(numel / block.values * block.bytes);
            offsets.push_back(c.get<std::uint64_t>(t.name));
            if (index_.contains(t.name)) c.bad("tensor \"" + t.name + "\" appears twice");
            index_[t.name] = tensors_.size();
            tensors_.push_back(std::move(t));
        }
        const std::size_t data = (c.at() + alignment - 1) / alignment * alignment;
        if (data > file_.size() && !tensors_.empty())
            c.bad("the tensor data would start past the end of the file");
        for (std::size_t i = 0; i < tensors_.size(); ++i) {
            auto& t = tensors_[i];
            if (offsets[i] % alignment != 0)
                throw error(errc::parse, path() + ": tensor " + t.name,
                            ftune::detail::cat("offset ", offsets[i], " is not a multiple of the ",
                                               "alignment ", alignment));
            if (offsets[i] > file_.size() - data || t.bytes > file_.size() - data - offsets[i])
                throw error(errc::parse, path() + ": tensor " + t.name,
                            ftune::detail::cat(t.bytes, " bytes at offset ", offsets[i],
                                               " run past the end of the ", file_.size(),
                                               "-byte file (truncated download?)"));
            t.offset = data + std::size_t(offsets[i]);
        }
        std::vector<const gguf_tensor*> by_offset;
        for (const auto& t : tensors_) by_offset.push_back(&t);
        std::sort(by_offset.begin(), by_offset.end(),
                  [](const gguf_tensor* a, const gguf_tensor* b) { return a->offset < b->offset; });
        for (std::size_t i = 1; i < by_offset.size(); ++i)
            if (by_offset[i]->offset < by_offset[i - 1]->offset + by_offset[i - 1]->bytes)
                throw error(errc::parse, path(),
                            "tensors " + by_offset[i - 1]->name + " and " + by_offset[i]->name +
                                " overlap");
    }

    mapped_file file_;
    std::uint32_t version_ = 0;
    nlohmann::json metadata_;
    std::vector<gguf_tensor> tensors_;
    std::map<std::string, std::size_t> index_;
};

}  // namespace io
FTUNE_NAMESPACE_END

// ftune::error: the one exception type ftune throws, with a stable id and the context it names.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include "ftune/config.hpp"

FTUNE_NAMESPACE_BEGIN

/// Stable identifiers of error kinds, for programs that branch on them.
enum class errc {
    shape_mismatch,    ///< tensors whose shapes do not fit together
    invalid_argument,  ///< a value outside its domain (negative rate, index past the end...)
    out_of_range,      ///< an index (token id, label) outside the table it indexes
    io,                ///< a file that cannot be opened, read or written
    parse,             ///< a file whose content is malformed
    unsupported,       ///< a valid request this build cannot do (e.g. CUDA without CUDA)
    internal,          ///< a broken invariant inside ftune: please report it
    overloaded,        ///< a bounded queue is full: try again later (a server's 503)
    timeout,           ///< a wait ran past its deadline (a request queued too long)
};

/// The name of an error id, e.g. "shape_mismatch".
constexpr std::string_view to_string(errc id) noexcept {
    switch (id) {
        case errc::shape_mismatch:
            return "shape_mismatch";
        case errc::invalid_argument:
            return "invalid_argument";
        case errc::out_of_range:
            return "out_of_range";
        case errc::io:
            return "io";
        case errc::parse:
            return "parse";
        case errc::unsupported:
            return "unsupported";
        case errc::internal:
            return "internal";
        case errc::overloaded:
            return "overloaded";
        case errc::timeout:
            return "timeout";
    }
    return "unknown";
}

/// The exception ftune throws: `what()` reads "ftune: <context>: <message>" and says how to fix it.
class error : public std::runtime_error {
  public:
    /// An error of kind `id` about `context` (a tensor, file:line, function...) with a message.
    error(errc id, std::string context, std::string message)
        : std::runtime_error(format(context, message)),
          id_(id),
          context_(std::move(context)),
          message_(std::move(message)) {}

    /// The kind of error.
    errc id() const noexcept { return id_; }
    /// What the error is about: a tensor name, a file:line, a function.
    const std::string& context() const noexcept { return context_; }
    /// The message without the context.
    const std::string& message() const noexcept { return message_; }

  private:
    static std::string format(const std::string& context, const std::string& message) {
        std::string s = "ftune: ";
        if (!context.empty()) s += context + ": ";
        return s + message;
    }
    errc id_;
    std::string context_;
    std::string message_;
};

namespace detail {
/// Concatenates streamable values into a string (for building error messages).
template <class... Args>
std::string cat(const Args&... args) {
    std::ostringstream os;
    (os << ... << args);
    return os.str();
}
}  // namespace detail

FTUNE_NAMESPACE_END

/// Throws ftune::error(id, context, message...) unless `cond` holds.
#define FTUNE_CHECK(cond, id, context, ...)                                                      \
    do {                                                                                         \
        if (!(cond)) [[unlikely]]                                                                \
            throw ::ftune::error(::ftune::errc::id, context, ::ftune::detail::cat(__VA_ARGS__)); \
    } while (0)

// Atomic writes: every file and directory ftune writes (weights, configurations, tokenizer files,
// training checkpoints, the training curve) appears whole or not at all. A crash, a full disk or
// a writer that throws leaves the previous version in place, never half of a new one.
//
//   io::write_file_atomic(path, [&](std::ostream& out) { out << text; });
//   io::write_directory_atomic(dir, [&](const std::filesystem::path& tmp) { /* files in tmp */ });
#pragma once

#include <atomic>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <ostream>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include "ftune/core/error.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>
#define FTUNE_HAVE_FSYNC 1
#endif

FTUNE_NAMESPACE_BEGIN
namespace io {

namespace detail {
/// A crash test's hook: when the environment variable FTUNE_CRASH_AT is `point` (or `point#N`:
/// the Nth time the point is reached), the process kills itself here with SIGKILL, as `kill -9`
/// at this moment would; otherwise nothing. The points sit between the steps of every atomic
/// write, promotion and retraining (tests/cli/faults.sh names them all).
inline void crash_point(std::string_view point) {
#if FTUNE_HAVE_FSYNC
    static const std::pair<std::string, long> target = [] {
        std::pair<std::string, long> t{"", 1};
        const char* e = std::getenv("FTUNE_CRASH_AT");
        if (!e) return t;
        const std::string_view s(e);
        const auto hash = s.find('#');
        t.first = std::string(s.substr(0, hash));
        if (hash != std::string_view::npos)
            std::from_chars(s.data() + hash + 1, s.data() + s.size(), t.second);
        return t;
    }();
    static std::atomic<long> seen{0};
    if (!target.first.empty() && point == target.first && ++seen == target.second)
        ::kill(::getpid(), SIGKILL);
#else
    (void)point;
#endif
}

/// Flushes a written file (or a directory's entries) to the disk (POSIX fsync; a no-op
/// elsewhere), so that a rename after it publishes complete data even after a power loss.
inline void sync_file(const std::filesystem::path& path) {
#if FTUNE_HAVE_FSYNC
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd >= 0) {
        ::fsync(fd);
        ::close(fd);
    }
#else
    (void)path;
#endif
}

/// A name beside `path` for a temporary file or directory ("." + name + ".tmp-<pid>-<n>"):
/// unique within the process and across processes writing to the same place.
inline std::filesystem::path temporary_beside(const std::filesystem::path& path) {
    static std::atomic<unsigned long> counter{0};
#if FTUNE_HAVE_FSYNC
    const long pid = long(::getpid());
#else
    const long pid = 0;
#endif
    const std::filesystem::path parent =
        path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
    std::string name = ".";  // appended piece by piece (GCC 12 warns falsely on "." + string)
    name += path.filename().string();
    name += ".tmp-";
    name += std::to_string(pid);
    name += '-';
    name += std::to_string(counter.fetch_add(1));
    return parent / name;
}

/// Swaps two directory entries in one step where the system can (Linux renameat2 with
/// RENAME_EXCHANGE); returns false where it cannot.
inline bool exchange(const std::filesystem::path& a, const std::filesystem::path& b) {
#if defined(__linux__) && defined(RENAME_EXCHANGE)
    return ::renameat2(AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE) == 0;
#else
    (void)a, (void)b;
    return false;
#endif
}
}  // namespace detail

/// Writes `path` atomically: write(std::ostream&) fills a temporary file in the same directory,
/// which is flushed, synced to the disk and renamed over `path`. A failed write (an error of the
/// stream, a full disk, write throwing) removes the temporary file, leaves the old `path` as it
/// was and throws ftune::error (io) naming `path` (or rethrows write's exception).
template <class Write>
void write_file_atomic(const std::filesystem::path& path, Write&& write) {
    const std::filesystem::path tmp = detail::temporary_beside(path);
    std::error_code ec;
    try {
        {
            std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
            if (!out)
                throw error(errc::io, path.string(),
                            "cannot create " + tmp.string() +
                                " (does the directory exist and is it writable?)");
            write(static_cast<std::ostream&>(out));
            out.flush();
            if (!out) throw error(errc::io, path.string(), "writing failed (disk full?)");
        }
        detail::sync_file(tmp);
        detail::crash_point("file-written");
        std::filesystem::rename(tmp, path, ec);
        if (ec) throw error(errc::io, path.string(), "cannot replace the file: " + ec.message());
    } catch (...) {
        std::filesystem::remove(tmp, ec);
        throw;
    }
}

/// write_file_atomic of a text.
inline void write_text_atomic(const std::filesystem::path& path, std::string_view text) {
    write_file_atomic(
        path, [&](std::ostream& out) { out.write(text.data(), std::streamsize(text.size())); });
}

/// Writes the directory `dir` atomically: fill(tmp) writes its files into a fresh temporary
/// directory beside `dir`, which then takes `dir`'s place whole: renamed to `dir` when there is
/// none, otherwise swapped with it in one step (Linux; elsewhere the old one is renamed aside
/// first) and the old one removed. A fill that throws removes the temporary directory and leaves
/// `dir` as it was; errors of the file system are ftune::error (io) naming `dir`.
template <class Fill>
void write_directory_atomic(const std::filesystem::path& dir, Fill&& fill) {
    namespace fs = std::filesystem;
    if (fs::exists(dir) && !fs::is_directory(dir))
        throw error(errc::io, dir.string(), "exists and is not a directory");
    std::error_code ec;
    if (dir.has_parent_path()) fs::create_directories(dir.parent_path(), ec);
    const fs::path tmp = detail::temporary_beside(dir);
    if (!fs::create_directory(tmp, ec))
        throw error(errc::io, dir.string(),
                    "cannot create the temporary directory " + tmp.string() + ": " +
                        (ec ? ec.message() : std::string("it exists")));
    try {
        fill(static_cast<const fs::path&>(tmp));
        detail::sync_file(tmp);
        detail::crash_point("directory-filled");
        if (!fs::exists(dir)) {
            fs::rename(tmp, dir);  // appears whole
        } else if (detail::exchange(tmp, dir)) {
            detail::crash_point("directory-swapped");
            fs::remove_all(tmp);  // tmp now holds the old directory
        } else {
            const fs::path old = detail::temporary_beside(dir);
            fs::rename(dir, old);
            fs::rename(tmp, dir);
            fs::remove_all(old, ec);
        }
    } catch (const fs::filesystem_error& e) {
        fs::remove_all(tmp, ec);
        throw error(errc::io, dir.string(), std::string("cannot write the directory: ") + e.what());
    } catch (...) {
        fs::remove_all(tmp, ec);
        throw;
    }
}

}  // namespace io
FTUNE_NAMESPACE_END

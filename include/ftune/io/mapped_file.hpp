// io::mapped_file: a read-only file in memory, memory-mapped where the platform allows (read into
// a buffer elsewhere), or bytes the caller already holds. What the checkpoint readers
// (safetensors_file, gguf_file) parse in place.
#pragma once

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "ftune/core/error.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define FTUNE_HAVE_MMAP 1
#endif

FTUNE_NAMESPACE_BEGIN
namespace io {

/// The bytes of a file, read-only, for as long as the object lives.
class mapped_file {
  public:
    /// Maps (or reads) `path`; throws ftune::error (io) naming it when it cannot be opened.
    explicit mapped_file(const std::filesystem::path& path) : path_(path.string()) { map(); }
    /// Bytes the caller holds (they must outlive the object); `name` stands for the path in
    /// messages.
    mapped_file(std::span<const unsigned char> bytes, std::string name)
        : path_(std::move(name)), base_(bytes.data()), size_(bytes.size()) {}
    mapped_file(const mapped_file&) = delete;
    mapped_file& operator=(const mapped_file&) = delete;
    ~mapped_file() { unmap(); }

    /// The file's path (or the name given with the bytes).
    const std::string& path() const noexcept { return path_; }
    /// All the bytes.
    std::span<const unsigned char> bytes() const noexcept { return {base_, size_}; }
    /// The first byte.
    const unsigned char* data() const noexcept { return base_; }
    /// Number of bytes.
    std::size_t size() const noexcept { return size_; }

  private:
    void map() {
#ifdef FTUNE_HAVE_MMAP
        const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            throw error(errc::io, path_, ftune::detail::cat("cannot open: ", std::strerror(errno)));
        struct stat st {};
        if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
            ::close(fd);
            throw error(errc::io, path_, "not a regular file");
        }
        size_ = static_cast<std::size_t>(st.st_size);
        if (size_ > 0) {
            void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
            if (p == MAP_FAILED) {
                ::close(fd);
                throw error(errc::io, path_,
                            ftune::detail::cat("cannot map: ", std::strerror(errno)));
            }
            base_ = static_cast<const unsigned char*>(p);
            mapped_ = true;
        }
        ::close(fd);
#else
        std::ifstream in(path_, std::ios::binary);
        if (!in) throw error(errc::io, path_, "cannot open");
        copy_.assign(std::istreambuf_iterator<char>(in), {});
        base_ = reinterpret_cast<const unsigned char*>(copy_.data());
        size_ = copy_.size();
#endif
    }

    void unmap() noexcept {
#ifdef FTUNE_HAVE_MMAP
        if (mapped_) ::munmap(const_cast<unsigned char*>(base_), size_);
#endif
        base_ = nullptr;
    }

    std::string path_;
    const unsigned char* base_ = nullptr;
    std::size_t size_ = 0;
    bool mapped_ = false;     // whether base_ is an mmap to undo
    std::vector<char> copy_;  // the file's bytes where mmap is not available
};

}  // namespace io
FTUNE_NAMESPACE_END

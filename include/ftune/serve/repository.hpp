// serve::repository: the versions of a served model in one directory, and which one is in
// service.
//
//   DIR/versions/<name>/   a complete Hugging Face model directory per version
//   DIR/current            a symbolic link to versions/<name>: the promoted version
//   DIR/history.tsv        every switch (and every retrained version kept out), appended
//
// promote() switches `current` atomically: a new link is made beside it and renamed over it
// (rename(2) replaces a directory entry in one step), so a reader, a server polling for a new
// version, or a crash at any point sees the old version or the new one, never neither. A
// directory that holds a model itself (config.json, no `current`) is a repository of one
// version that never changes. `ftune serve --model DIR` serves `current` and reloads when it
// changes.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "ftune/config.hpp"
#include "ftune/core/error.hpp"
#include "ftune/io/atomic.hpp"

FTUNE_NAMESPACE_BEGIN
namespace serve {

/// A model repository (see the file comment) at a directory.
class repository {
  public:
    /// The repository at dir (not read yet).
    explicit repository(std::filesystem::path dir) : dir_(std::move(dir)) {}

    /// Its directory.
    const std::filesystem::path& dir() const noexcept { return dir_; }
    /// Whether versions are switched through `current` (false: a plain model directory).
    bool versioned() const {
        std::error_code ec;
        return std::filesystem::is_symlink(dir_ / "current", ec);
    }

    /// The version in service: `current`'s target name, or "" for a plain model directory (or a
    /// model file: a decoder's GGUF). Throws errc::io when the path is none of these.
    std::string promoted() const {
        if (versioned()) {
            const auto target = std::filesystem::read_symlink(dir_ / "current");
            return target.filename().string();
        }
        if (std::filesystem::exists(dir_ / "config.json") ||
            (std::filesystem::is_regular_file(dir_) && dir_.extension() == ".gguf"))
            return "";
        throw error(errc::io, dir_.string(),
                    "neither a model directory (config.json) nor a model repository (a "
                    "`current` link to versions/<name>); give the directory a fine-tuning "
                    "wrote, or promote a version into it");
    }
    /// The model directory in service.
    std::filesystem::path promoted_path() const {
        const std::string v = promoted();
        return v.empty() ? dir_ : dir_ / "versions" / v;
    }

    /// The versions present, by name (sorted).
    std::vector<std::string> versions() const {
        std::vector<std::string> names;
        std::error_code ec;
        for (const auto& e : std::filesystem::directory_iterator(dir_ / "versions", ec))
            if (e.is_directory() && !e.path().filename().string().starts_with("."))
                names.push_back(e.path().filename().string());  // (not a save's temporary)
        std::sort(names.begin(), names.end());
        return names;
    }

    /// One line of DIR/history.tsv: a switch of the version in service, or a retrained
    /// version kept out of service.
    struct event {
        std::string time;      ///< UTC, ISO 8601
        std::string kind;      ///< promote, rollback, retrain-promoted, retrain-kept
        std::string version;   ///< the version acted on
        std::string previous;  ///< the version in service before ("" for none)
        std::string note;      ///< free text (the metrics of a retraining)
    };

    /// The events of DIR/history.tsv, oldest first (none when the file is absent).
    std::vector<event> history() const {
        std::vector<event> out;
        std::ifstream in(dir_ / "history.tsv");
        std::string line;
        while (std::getline(in, line)) {
            if (line.empty() || line.starts_with("time\t")) continue;
            if (std::count(line.begin(), line.end(), '\t') < 4) continue;  // cut short by a crash
            std::vector<std::string> f;
            std::size_t a = 0;
            for (std::size_t b; (b = line.find('\t', a)) != std::string::npos; a = b + 1)
                f.push_back(line.substr(a, b - a));
            f.push_back(line.substr(a));
            f.resize(5);
            out.push_back({f[0], f[1], f[2], f[3], f[4]});
        }
        return out;
    }

    /// Appends an event to DIR/history.tsv (the header first when the file is new) and syncs
    /// it. Tabs and line breaks in the fields become spaces.
    void record(const std::string& kind, const std::string& version, const std::string& previous,
                const std::string& note = "") const {
        const auto path = dir_ / "history.tsv";
        const bool fresh = !std::filesystem::exists(path);
        bool torn = false;  // a line cut short by a crash: the new one starts on a line of its own
        if (!fresh) {
            std::ifstream last(path, std::ios::binary | std::ios::ate);
            if (last && last.tellg() > 0) {
                last.seekg(-1, std::ios::end);
                torn = last.get() != '\n';
            }
        }
        std::ofstream out(path, std::ios::app);
        if (fresh) out << "time\tevent\tversion\tprevious\tnote\n";
        if (torn) out << '\n';
        auto clean = [](std::string s) {
            for (char& c : s)
                if (c == '\t' || c == '\n' || c == '\r') c = ' ';
            return s;
        };
        const std::time_t now = std::time(nullptr);
        char stamp[32];
        std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
        out << stamp << '\t' << clean(kind) << '\t' << std::flush;
        io::detail::crash_point("history-torn");
        out << clean(version) << '\t' << clean(previous) << '\t' << clean(note) << '\n';
        out.close();
        if (!out) throw error(errc::io, path.string(), "cannot append to the history (disk full?)");
        io::detail::sync_file(path);
    }

    /// Where a rollback goes: the version in service before the current one was last promoted
    /// (the `previous` of its last promote or retrain-promoted event; rollbacks are skipped,
    /// so rolling back twice goes two promotions back). "" when the history does not say.
    std::string previous() const {
        const std::string now = versioned() ? promoted() : "";
        const auto h = history();
        for (auto it = h.rbegin(); it != h.rend(); ++it)
            if (it->version == now && (it->kind == "promote" || it->kind == "retrain-promoted"))
                return it->previous;
        return "";
    }

    /// Puts version `name` (versions/<name>, a model directory with config.json) in service:
    /// `current` is replaced atomically and the directory synced, so after a crash `current`
    /// names the old version or this one.
    void promote(const std::string& name) const {
        if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
            throw error(errc::invalid_argument, "promote",
                        "a version is a plain directory name under versions/");
        if (!std::filesystem::exists(dir_ / "versions" / name / "config.json"))
            throw error(errc::io, (dir_ / "versions" / name).string(),
                        "is not a model directory (no config.json): save the model there "
                        "first");
        const auto current = dir_ / "current";
        const auto tmp = io::detail::temporary_beside(current);
        std::error_code ec;
        std::filesystem::create_directory_symlink(std::filesystem::path("versions") / name, tmp);
        io::detail::crash_point("promote-linked");
        if (std::rename(tmp.c_str(), current.c_str()) != 0) {
            const int e = errno;
            std::filesystem::remove(tmp, ec);
            throw error(errc::io, current.string(),
                        std::string("cannot switch the promoted version: ") + std::strerror(e));
        }
        io::detail::sync_file(dir_);  // the rename reaches the disk before promote returns
    }

  private:
    std::filesystem::path dir_;
};

}  // namespace serve
FTUNE_NAMESPACE_END

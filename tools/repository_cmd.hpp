// `ftune promote`: puts a version of a model repository in service (serve::repository), the
// atomic switch a running `ftune serve` picks up; without --version, lists the versions and
// the one in service.
#pragma once

#include <iostream>
#include <string>
#include <string_view>

#include <ftune/serve/repository.hpp>

namespace cli {

// Runs `ftune promote` with argv[2..]; returns the exit status.
inline int run_promote(int argc, char** argv) {
    std::string dir, version;
    for (int i = 2; i < argc; ++i) {
        const std::string_view a = argv[i];
        if (i + 1 >= argc)
            throw ftune::error(ftune::errc::invalid_argument, std::string(a), "expects a value");
        const std::string v = argv[++i];
        if (a == "--model")
            dir = v;
        else if (a == "--version")
            version = v;
        else
            throw ftune::error(ftune::errc::invalid_argument, std::string(a),
                               "unknown option of ftune promote");
    }
    if (dir.empty())
        throw ftune::error(ftune::errc::invalid_argument, "ftune promote",
                           "--model DIR is required (a model repository: versions/<name>/ "
                           "and a `current` link)");
    const ftune::serve::repository repo(dir);
    if (!version.empty()) {
        const std::string previous = repo.versioned() ? repo.promoted() : "";
        repo.promote(version);
        repo.record("promote", version, previous);
        std::cout << "promoted " << version << "\n";
        return 0;
    }
    const std::string current = repo.versioned() ? repo.promoted() : "";
    for (const auto& v : repo.versions()) std::cout << (v == current ? "* " : "  ") << v << "\n";
    return 0;
}

}  // namespace cli

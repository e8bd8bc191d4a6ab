// io::safetensors_file: values of every float dtype, and malformed files rejected with errors that
// name the file and the tensor (never an out-of-bounds read).
#include <ftune/io/atomic.hpp>
#include <ftune/io/safetensors.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "catch.hpp"

namespace {

// Writes a safetensors file: 8-byte length, header, data.
std::string write_file(const std::string& name, const std::string& header,
                       const std::vector<unsigned char>& data, std::uint64_t length_field = ~0ull) {
    const auto path = (std::filesystem::temp_directory_path() / ("ftune_test_" + name)).string();
    std::ofstream out(path, std::ios::binary);
    const std::uint64_t n = length_field == ~0ull ? header.size() : length_field;
    for (int i = 0; i < 8; ++i) out.put(char((n >> (8 * i)) & 0xff));
    out << header;
    out.write(reinterpret_cast<const char*>(data.data()), std::streamsize(data.size()));
    return path;
}

// The message of the ftune::error thrown by opening path ("" when none).
std::string open_error(const std::string& path) {
    try {
        ftune::io::safetensors_file f(path);
    } catch (const ftune::error& e) {
        return e.what();
    }
    return "";
}

}  // namespace

TEST_CASE("safetensors: F32, F16, BF16 and F64 values, shapes, metadata", "[unit][io]") {
    // 1.5f = 0x3fc00000; half 1.5 = 0x3e00, half -2 = 0xc000, half 65504 = 0x7bff,
    // half smallest subnormal 2^-24 = 0x0001; bf16 1.5 = 0x3fc0; double 0.1
    std::vector<unsigned char> data = {0x00, 0x00, 0xc0, 0x3f,  // F32 a: [1.5]
                                       0x00, 0x3e, 0x00, 0xc0, 0xff, 0x7b, 0x01, 0x00,  // F16 b
                                       0xc0, 0x3f};                                     // BF16 c
    const double tenth = 0.1;
    const auto* t = reinterpret_cast<const unsigned char*>(&tenth);
    data.insert(data.end(), t, t + 8);  // F64 d (this machine is little-endian)
    const std::string header = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                               R"("b":{"dtype":"F16","shape":[2,2],"data_offsets":[4,12]},)"
                               R"("c":{"dtype":"BF16","shape":[1],"data_offsets":[12,14]},)"
                               R"("d":{"dtype":"F64","shape":[],"data_offsets":[14,22]},)"
                               R"("__metadata__":{"format":"pt"}})";
    const auto path = write_file("ok.safetensors", header, data);
    const ftune::io::safetensors_file f(path);
    REQUIRE(f.tensors().size() == 4);
    CHECK(f.metadata().at("format") == "pt");
    CHECK(f.read<float>(f.at("a")) == std::vector<float>{1.5f});
    CHECK(f.read<double>(f.at("b")) == std::vector<double>{1.5, -2.0, 65504.0, 0x1p-24});
    CHECK(f.at("b").shape == std::vector<std::size_t>{2, 2});
    CHECK(f.read<float>(f.at("c")) == std::vector<float>{1.5f});
    CHECK(f.read<double>(f.at("d")) == std::vector<double>{0.1});
    CHECK(f.find("e") == nullptr);
    CHECK_THROWS_AS(f.at("e"), ftune::error);
    std::vector<float> wrong(3);
    CHECK_THROWS_AS(f.read(f.at("b"), std::span<float>(wrong)), ftune::error);
    std::filesystem::remove(path);
}

TEST_CASE(
    "safetensors: an empty tensor at a full tensor's offset is no overlap (a frozen parameter's "
    "empty optimizer moments in a checkpoint); two full ones there are",
    "[unit][io]") {
    const std::vector<unsigned char> data(8, 0);
    const auto ok = write_file("empty_at_offset.safetensors",
                               R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                               R"("b":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}})",
                               data);
    CHECK(open_error(ok).empty());
    const ftune::io::safetensors_file f(ok);
    CHECK(f.at("b").numel() == 0);
    CHECK(f.at("a").numel() == 2);
    const auto bad = write_file("full_at_offset.safetensors",
                                R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                R"("b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                                data);
    CHECK_THAT(open_error(bad), Catch::Contains("overlap"));
}

TEST_CASE("safetensors: malformed files are errors naming the file and the problem", "[unit][io]") {
    const std::vector<unsigned char> four(4, 0);
    struct bad_case {
        const char* name;
        std::string header;
        std::vector<unsigned char> data;
        std::uint64_t length_field;
        const char* expect;
    };
    const std::vector<bad_case> cases = {
        {"empty", "", {}, ~0ull, "malformed"},
        {"length", "{}", four, 1000000, "runs past the end"},
        {"huge header", std::string(100'000'001, ' '), four, ~0ull, "exceeds the format's limit"},
        {"json", "{\"a\":", four, ~0ull, "malformed"},
        {"dtype", R"({"a":{"dtype":"F8","shape":[1],"data_offsets":[0,4]}})", four, ~0ull,
         "unknown dtype"},
        {"offsets", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", four, ~0ull,
         "outside"},
        {"size", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", four, ~0ull,
         "needs 8 bytes"},
        {"negative", R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", four, ~0ull,
         "negative"},
        {"overlap",
         R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})",
         four, ~0ull, "overlap"},
    };
    for (const auto& c : cases) {
        INFO(c.name);
        const auto path =
            write_file(std::string(c.name) + ".safetensors", c.header, c.data, c.length_field);
        const std::string msg = open_error(path);
        CHECK(msg.find(path) != std::string::npos);
        CHECK(msg.find(c.expect) != std::string::npos);
        std::filesystem::remove(path);
    }
    CHECK(open_error("/nonexistent/model.safetensors").find("cannot open") != std::string::npos);
    {
        const auto p = (std::filesystem::temp_directory_path() / "ftune_test_short").string();
        std::ofstream(p, std::ios::binary) << "abc";
        CHECK(open_error(p).find("too short") != std::string::npos);
        std::filesystem::remove(p);
    }
    // a non-float tensor is not read as floats
    const auto path = write_file("ints.safetensors",
                                 R"({"i":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}})", four);
    const ftune::io::safetensors_file f(path);
    CHECK_THROWS_AS(f.read<float>(f.at("i")), ftune::error);
    std::filesystem::remove(path);
}

TEST_CASE("atomic writes: a file or directory is replaced whole, a failed write leaves the old",
          "[unit][io]") {
    namespace fs = std::filesystem;
    const fs::path dir = fs::temp_directory_path() / "ftune_test_atomic";
    fs::remove_all(dir);
    fs::create_directories(dir);
    auto entries = [&] {  // names in dir, temporaries included
        std::vector<std::string> v;
        for (const auto& e : fs::directory_iterator(dir)) v.push_back(e.path().filename().string());
        std::sort(v.begin(), v.end());
        return v;
    };
    auto read = [](const fs::path& p) {
        std::ifstream in(p, std::ios::binary);
        return std::string(std::istreambuf_iterator<char>(in), {});
    };
    const fs::path file = dir / "a.txt";
    ftune::io::write_text_atomic(file, "old");
    ftune::io::write_text_atomic(file, "new text");
    CHECK(read(file) == "new text");
    // a writer that throws: the old content stays, no temporary is left
    CHECK_THROWS_AS(ftune::io::write_file_atomic(file,
                                                 [](std::ostream& out) {
                                                     out << "half";
                                                     throw std::runtime_error("interrupted");
                                                 }),
                    std::runtime_error);
    CHECK(read(file) == "new text");
    CHECK(entries() == std::vector<std::string>{"a.txt"});
    // a directory that cannot exist: an ftune::error naming the file
    try {
        ftune::io::write_text_atomic(dir / "missing" / "b.txt", "x");
        FAIL("no error");
    } catch (const ftune::error& e) {
        CHECK(std::string(e.what()).find("missing/b.txt") != std::string::npos);
    }
    // directories: created whole, then replaced whole (the old files gone), a failed fill leaves
    // the previous one
    const fs::path d = dir / "ckpt";
    ftune::io::write_directory_atomic(d, [](const fs::path& t) {
        ftune::io::write_text_atomic(t / "one", "1");
        ftune::io::write_text_atomic(t / "two", "2");
    });
    CHECK(read(d / "one") == "1");
    ftune::io::write_directory_atomic(
        d, [](const fs::path& t) { ftune::io::write_text_atomic(t / "three", "3"); });
    CHECK(read(d / "three") == "3");
    CHECK_FALSE(fs::exists(d / "one"));
    CHECK_THROWS_AS(ftune::io::write_directory_atomic(d,
                                                      [](const fs::path& t) {
                                                          ftune::io::write_text_atomic(t / "four",
                                                                                       "4");
                                                          throw std::runtime_error("crash");
                                                      }),
                    std::runtime_error);
    CHECK(read(d / "three") == "3");
    CHECK_FALSE(fs::exists(d / "four"));
    CHECK(entries() == std::vector<std::string>{"a.txt", "ckpt"});
    // a file where the directory should be
    CHECK_THROWS_AS(ftune::io::write_directory_atomic(file, [](const fs::path&) {}), ftune::error);
    fs::remove_all(dir);
}

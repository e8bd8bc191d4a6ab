// Serving pieces without HTTP: the dynamic batcher (batches bounded by max_batch, every answer
// to its own caller, a full queue refused, an expired item failed, a throwing batch reported to
// each of its callers, queued work finished at destruction) and the model repository (atomic
// promotion, versions, bad names and directories refused with the fix).
#include <ftune/serve/batcher.hpp>
#include <ftune/serve/repository.hpp>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <latch>
#include <mutex>
#include <thread>
#include <vector>

#include "catch.hpp"

#ifndef FTUNE_TEST_TMP
#error "FTUNE_TEST_TMP must name a scratch directory"
#endif

using namespace std::chrono_literals;
namespace serve = ftune::serve;
namespace fs = std::filesystem;

TEST_CASE("batcher: concurrent items run in batches of at most max_batch, each answer its own",
          "[serve]") {
    std::mutex mu;
    std::vector<std::size_t> sizes;
    serve::batcher<int, int> b(
        [&](std::span<const int> in) {
            {
                std::lock_guard lock(mu);
                sizes.push_back(in.size());
            }
            std::this_thread::sleep_for(2ms);  // long enough for the others to queue up
            std::vector<int> out;
            for (const int x : in) out.push_back(3 * x + 1);
            return out;
        },
        {.max_batch = 4, .max_wait = 5ms, .max_queue = 100, .workers = 2});
    constexpr int callers = 16, each = 10;
    std::vector<std::thread> threads;
    std::atomic<int> wrong{0};
    for (int t = 0; t < callers; ++t)
        threads.emplace_back([&, t] {
            for (int k = 0; k < each; ++k) {
                const int x = t * 1000 + k;
                wrong += b.submit(x).get() != 3 * x + 1;
            }
        });
    for (auto& t : threads) t.join();
    CHECK(wrong == 0);
    const auto st = b.stats();
    CHECK(st.items == std::size_t(callers * each));
    CHECK(st.rejected == 0);
    CHECK(st.timed_out == 0);
    std::size_t total = 0, largest = 0;
    for (const std::size_t n : sizes) total += n, largest = std::max(largest, n);
    CHECK(total == std::size_t(callers * each));
    CHECK(largest <= 4);
    CHECK(largest >= 2);  // 16 callers at once: batches did form
    CHECK(st.batches == sizes.size());
    CHECK(st.batches < std::size_t(callers * each));
}

TEST_CASE("batcher: a full queue refuses at once; an item past its deadline fails, not runs",
          "[serve]") {
    std::latch release(1);
    std::atomic<int> ran{0};
    serve::batcher<int, int> b(
        [&](std::span<const int> in) {
            release.wait();
            ran += int(in.size());
            return std::vector<int>(in.begin(), in.end());
        },
        {.max_batch = 1, .max_wait = 0ms, .max_queue = 2, .workers = 1, .timeout = 50ms});
    auto first = b.submit(1);  // taken by the worker, which blocks
    while (b.queued() != 0) std::this_thread::yield();
    auto second = b.submit(2), third = b.submit(3);  // queued: the queue is full
    try {
        b.submit(4);
        FAIL("a submit to a full queue must throw");
    } catch (const ftune::error& e) {
        CHECK(e.id() == ftune::errc::overloaded);
        CHECK(std::string(e.what()).find("try again later") != std::string::npos);
    }
    std::this_thread::sleep_for(80ms);  // past the 50 ms deadline of the queued two
    release.count_down();
    CHECK(first.get() == 1);
    for (auto* f : {&second, &third}) {
        try {
            f->get();
            FAIL("an item queued past its timeout must fail");
        } catch (const ftune::error& e) {
            CHECK(e.id() == ftune::errc::timeout);
        }
    }
    CHECK(ran == 1);
    const auto st = b.stats();
    CHECK(st.rejected == 1);
    CHECK(st.timed_out == 2);
}

TEST_CASE("batcher: a batch that throws fails each of its items; queued work ends at destruction",
          "[serve]") {
    std::vector<std::future<int>> futures;
    {
        serve::batcher<int, int> b(
            [](std::span<const int> in) -> std::vector<int> {
                for (const int x : in)
                    if (x < 0)
                        throw ftune::error(ftune::errc::invalid_argument, "test", "negative");
                return std::vector<int>(in.begin(), in.end());
            },
            {.max_batch = 8, .max_wait = 200ms, .max_queue = 100, .workers = 1});
        auto bad = b.submit(-1);
        auto good_in_same_batch = b.submit(5);  // within max_wait: the same batch, which throws
        CHECK_THROWS_WITH(bad.get(), Catch::Contains("negative"));
        CHECK_THROWS_WITH(good_in_same_batch.get(), Catch::Contains("negative"));
        for (int i = 0; i < 20; ++i) futures.push_back(b.submit(i));
        CHECK(b.stats().failed == 2);
    }  // destroyed with items queued: they run first
    for (int i = 0; i < 20; ++i) CHECK(futures[std::size_t(i)].get() == i);
    CHECK_THROWS_WITH(
        (serve::batcher<int, int>([](std::span<const int>) { return std::vector<int>{}; },
                                  {.max_batch = 0})),
        Catch::Contains("at least 1"));
}

namespace {
// A directory with a config.json: what repository takes for a model directory.
void make_model_dir(const fs::path& d, const std::string& tag) {
    fs::create_directories(d);
    std::ofstream(d / "config.json") << "{\"tag\": \"" << tag << "\"}\n";
}
}  // namespace

TEST_CASE("repository: promotion switches `current` atomically; bad versions are refused",
          "[serve]") {
    const fs::path dir = fs::path(FTUNE_TEST_TMP) / "repository";
    fs::remove_all(dir);
    make_model_dir(dir / "versions" / "2026-01-01", "a");
    make_model_dir(dir / "versions" / "2026-02-01", "b");
    fs::create_directories(dir / "versions" / "empty");  // no config.json
    const serve::repository repo(dir);
    CHECK_FALSE(repo.versioned());
    CHECK_THROWS_WITH(repo.promoted(), Catch::Contains("neither a model directory"));
    CHECK(repo.versions() == std::vector<std::string>{"2026-01-01", "2026-02-01", "empty"});
    repo.promote("2026-01-01");
    CHECK(repo.versioned());
    CHECK(repo.promoted() == "2026-01-01");
    CHECK(fs::equivalent(repo.promoted_path(), dir / "versions" / "2026-01-01"));
    CHECK_THROWS_WITH(repo.promote("empty"), Catch::Contains("no config.json"));
    CHECK_THROWS_WITH(repo.promote("../x"), Catch::Contains("plain directory name"));
    CHECK_THROWS_WITH(repo.promote("missing"), Catch::Contains("no config.json"));
    CHECK(repo.promoted() == "2026-01-01");  // a refused promotion changed nothing
    // readers during promotions always find a complete model directory behind `current`
    std::atomic<bool> stop{false};
    std::atomic<int> broken{0}, reads{0};
    std::thread reader([&] {
        while (!stop) {
            std::ifstream f(dir / "current" / "config.json");
            std::string s;
            std::getline(f, s);
            broken += s.find("\"tag\"") == std::string::npos;
            ++reads;
        }
    });
    for (int i = 0; i < 200; ++i) repo.promote(i % 2 ? "2026-01-01" : "2026-02-01");
    while (reads < 100) std::this_thread::yield();
    stop = true;
    reader.join();
    CHECK(broken == 0);
    CHECK(repo.promoted() == "2026-01-01");
    std::size_t leftovers = 0;  // no temporary links left beside `current`
    for (const auto& e : fs::directory_iterator(dir))
        leftovers += e.path().filename() != "versions" && e.path().filename() != "current";
    CHECK(leftovers == 0);
    // a plain model directory: version "", itself
    const serve::repository plain(dir / "versions" / "2026-02-01");
    CHECK(plain.promoted().empty());
    CHECK(plain.promoted_path() == dir / "versions" / "2026-02-01");
}

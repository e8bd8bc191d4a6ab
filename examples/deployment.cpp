// Deployment: load a fine-tuned classifier (a Hugging Face directory saved by `ftune train`,
// ftune::io::save_hf or Transformers' save_pretrained) into a host program, measure the latency
// of one sentence at a time, then serve sentences from several threads through one const,
// thread-safe ftune::serve::text_classifier and check that every thread gets the answers the
// single-threaded loop got. Resident memory is printed after each stage: the replicas that serve
// concurrent calls share the model's weights, so more threads add only activations.
//
//   deployment --model sst2-model [--threads 2] [--iterations 200] < sentences.txt
//
// Sentences come from stdin, one per line (a few built-in ones when stdin is empty).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <ftune/io.hpp>
#include <ftune/serve.hpp>

using Model = ftune::bert::sequence_classifier<>;
using clock_type = std::chrono::steady_clock;

// The process's resident memory in MB (Linux's /proc/self/status; "?" elsewhere).
std::string resident_mb() {
    std::ifstream in("/proc/self/status");
    for (std::string line; std::getline(in, line);)
        if (line.rfind("VmRSS:", 0) == 0) return std::to_string(std::stol(line.substr(6)) / 1024);
    return "?";
}

int main(int argc, char** argv) try {
    std::filesystem::path model_dir;
    std::size_t threads = 2, iterations = 200;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string k = argv[i], v = argv[i + 1];
        if (k == "--model")
            model_dir = v;
        else if (k == "--threads")
            threads = std::max<std::size_t>(1, std::stoul(v));
        else if (k == "--iterations")
            iterations = std::max<std::size_t>(1, std::stoul(v));
        else
            throw ftune::error(ftune::errc::invalid_argument, k, "unknown option");
    }
    if (model_dir.empty())
        throw ftune::error(ftune::errc::invalid_argument, "--model", "give a model directory");
    std::vector<std::string> texts;
    for (std::string line; std::getline(std::cin, line);)
        if (!line.empty()) texts.push_back(line);
    if (texts.empty())
        texts = {"a gripping , beautifully acted film", "the plot is thin and the jokes fall flat",
                 "I still have not received my new card", "profit rose 5 % to EUR 10 mn"};

    // 1. Load once; the classifier is const from here on.
    const auto t0 = clock_type::now();
    const ftune::serve::text_classifier<Model> clf(ftune::io::load_hf<Model>(model_dir));
    std::cout << "loaded in "
              << std::chrono::duration<double, std::milli>(clock_type::now() - t0).count()
              << " ms; labels:";
    for (const auto& l : clf.labels()) std::cout << " " << l;
    std::cout << "; resident " << resident_mb() << " MB\n";

    // 2. Latency of one sentence at a time (tokenize + forward + softmax), one thread.
    ftune::set_num_threads(1);
    std::vector<std::string> expected;
    for (const auto& t : texts) expected.push_back(clf.predict(t).name);
    std::vector<double> ms;
    for (std::size_t i = 0; i < iterations; ++i) {
        const auto a = clock_type::now();
        (void)clf.predict(texts[i % texts.size()]);
        ms.push_back(std::chrono::duration<double, std::milli>(clock_type::now() - a).count());
    }
    std::sort(ms.begin(), ms.end());
    auto pct = [&](double q) { return ms[std::min(ms.size() - 1, std::size_t(q * ms.size()))]; };
    std::cout << "latency per sentence (1 thread): p50 " << pct(0.5) << " ms, p90 " << pct(0.9)
              << " ms, p99 " << pct(0.99) << " ms; resident " << resident_mb() << " MB\n";

    // 3. The same classifier from several threads at once (each kernel single-threaded).
    std::atomic<std::size_t> next{0}, wrong{0};
    const std::size_t total = iterations * threads;
    const auto s0 = clock_type::now();
    std::vector<std::thread> pool;
    for (std::size_t w = 0; w < threads; ++w)
        pool.emplace_back([&] {
            ftune::set_num_threads(1);
            for (std::size_t i; (i = next++) < total;)
                if (clf.predict(texts[i % texts.size()]).name != expected[i % texts.size()])
                    ++wrong;
        });
    for (auto& t : pool) t.join();
    const double secs = std::chrono::duration<double>(clock_type::now() - s0).count();
    std::cout << threads << " threads: " << double(total) / secs << " sentences/s, "
              << clf.replicas() << " model replicas, resident " << resident_mb() << " MB, " << wrong
              << " answers differing from the single-threaded ones\n";
    for (std::size_t i = 0; i < std::min<std::size_t>(texts.size(), 4); ++i)
        std::cout << expected[i] << "\t" << texts[i] << "\n";
    return wrong == 0 ? 0 : 1;
} catch (const std::exception& e) {
    std::cerr << "deployment: " << e.what() << "\n";
    return 1;
}

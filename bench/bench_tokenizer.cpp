// Tokenizer throughput on SST-2's 67,349 training sentences (bert-base-uncased), one thread:
// characters (code points) and bytes per second, whole encodings ([CLS] ... [SEP] with offsets).
// bench/compare_tokenizers.py runs Hugging Face's fast tokenizer on the same sentences.
//
//   build/bin/ftune_bench_tokenizer [--data DIR]   (default: $FTUNE_DATA_DIR or ../shared/data)
#include <ftune/backends/cpu/cpu_info.hpp>
#include <ftune/text.hpp>

#include <benchmark/benchmark.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace {

std::string data_dir =
    std::getenv("FTUNE_DATA_DIR") ? std::getenv("FTUNE_DATA_DIR") : "../shared/data";

// SST-2 training sentences (first TSV column, after the header).
std::vector<std::string> sst2_train() {
    std::ifstream in(data_dir + "/sst2/train.tsv", std::ios::binary);
    if (!in) throw std::runtime_error("cannot read " + data_dir + "/sst2/train.tsv");
    std::vector<std::string> out;
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) out.push_back(line.substr(0, line.find('\t')));
    return out;
}

void bm_encode_sst2(benchmark::State& st) {
    static const auto texts = sst2_train();
    static const auto tok =
        ftune::text::bert_tokenizer::from_vocab(data_dir + "/bert-base-uncased/vocab.txt");
    std::size_t chars = 0, bytes = 0, tokens = 0;
    for (const auto& t : texts) {
        bytes += t.size();
        for (unsigned char c : t) chars += (c & 0xC0) != 0x80;
    }
    for (auto _ : st) {
        tokens = 0;
        for (const auto& t : texts) {
            const auto e = tok.encode(t);
            tokens += e.ids.size();
            benchmark::DoNotOptimize(e.ids.data());
        }
    }
    st.counters["chars_per_s"] =
        benchmark::Counter(double(chars), benchmark::Counter::kIsIterationInvariantRate);
    st.counters["bytes_per_s"] =
        benchmark::Counter(double(bytes), benchmark::Counter::kIsIterationInvariantRate);
    st.counters["tokens"] = double(tokens);
}
BENCHMARK(bm_encode_sst2)->Unit(benchmark::kMillisecond)->MinTime(2.0);

}  // namespace

int main(int argc, char** argv) {
    for (int i = 1; i + 1 < argc; ++i)
        if (std::string(argv[i]) == "--data") data_dir = argv[i + 1];
    benchmark::Initialize(&argc, argv);
    benchmark::AddCustomContext("cpu", ftune::backends::cpu::this_cpu().summary());
    benchmark::RunSpecifiedBenchmarks();
    return 0;
}

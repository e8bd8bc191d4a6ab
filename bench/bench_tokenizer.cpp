// Tokenizer throughput on SST-2's 67,349 training sentences, one thread: characters (code points)
// and bytes per second. BERT's WordPiece (bert-base-uncased): whole encodings ([CLS] ... [SEP]
// with offsets); with --bpe, a byte-level BPE tokenizer.json (a decoder's): the ids, and the ids
// with offsets. bench/compare_tokenizers.py runs Hugging Face's tokenizers on the same sentences.
//
//   build/bin/ftune_bench_tokenizer [--data DIR] [--bpe TOKENIZER.json]
//   (data: default $FTUNE_DATA_DIR or ../shared/data)
#include <ftune/backends/cpu/cpu_info.hpp>
#include <ftune/text.hpp>
#include <ftune/text/tokenizer_json.hpp>

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

std::string bpe_path;  // --bpe: a byte-level BPE tokenizer.json

// Byte-level BPE ids (offsets too when st.range(0) is 1) of every sentence, one by one.
void bm_encode_bpe_sst2(benchmark::State& st) {
    static const auto texts = sst2_train();
    static const auto tok = ftune::text::load_bpe_tokenizer_json(bpe_path);
    std::size_t chars = 0, bytes = 0, tokens = 0;
    for (const auto& t : texts) {
        bytes += t.size();
        for (unsigned char c : t) chars += (c & 0xC0) != 0x80;
    }
    const bool offsets = st.range(0) != 0;
    for (auto _ : st) {
        tokens = 0;
        for (const auto& t : texts) {
            if (offsets) {
                const auto e = tok.encode_with_offsets(t);
                tokens += e.size();
                benchmark::DoNotOptimize(e.data());
            } else {
                const auto e = tok.encode(t);
                tokens += e.size();
                benchmark::DoNotOptimize(e.data());
            }
        }
    }
    st.counters["chars_per_s"] =
        benchmark::Counter(double(chars), benchmark::Counter::kIsIterationInvariantRate);
    st.counters["bytes_per_s"] =
        benchmark::Counter(double(bytes), benchmark::Counter::kIsIterationInvariantRate);
    st.counters["tokens"] = double(tokens);
}

}  // namespace

int main(int argc, char** argv) {
    for (int i = 1; i + 1 < argc; ++i) {
        if (std::string(argv[i]) == "--data") data_dir = argv[i + 1];
        if (std::string(argv[i]) == "--bpe") bpe_path = argv[i + 1];
    }
    if (!bpe_path.empty())
        benchmark::RegisterBenchmark("bm_encode_bpe_sst2", bm_encode_bpe_sst2)
            ->ArgName("offsets")
            ->Arg(0)
            ->Arg(1)
            ->Unit(benchmark::kMillisecond)
            ->MinTime(2.0);
    benchmark::Initialize(&argc, argv);
    benchmark::AddCustomContext("cpu", ftune::backends::cpu::this_cpu().summary());
    benchmark::RunSpecifiedBenchmarks();
    return 0;
}

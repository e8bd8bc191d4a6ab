// How much of a decoder fine-tuning run's batches is padding: a JSON-lines file of conversations
// or prompt-completion pairs encoded as `ftune train --task chat` encodes them, batched by
// train::batch_order with and without length bucketing (3 epochs, seed 42). Packing examples into
// full sequences could save at most this share of the positions (docs/design-notes.md).
//
//   build/bin/ftune_bench_lm_padding --gguf SmolLM2-135M-Instruct.Q4_1.gguf --data FILE.jsonl
#include <ftune/io/gguf_llama.hpp>
#include <ftune/train/batching.hpp>
#include <ftune/train/lm_batching.hpp>

#include <algorithm>
#include <cstdio>
#include <string>

int main(int argc, char** argv) try {
    std::string gguf, data;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i];
        if (a == "--gguf") gguf = argv[i + 1];
        if (a == "--data") data = argv[i + 1];
    }
    if (gguf.empty() || data.empty()) {
        std::fprintf(stderr, "usage: ftune_bench_lm_padding --gguf FILE --data FILE.jsonl\n");
        return 2;
    }
    const ftune::io::gguf_file f(gguf);
    const auto tok = ftune::io::bpe_tokenizer_from_gguf(f);
    const ftune::text::chat_template tmpl(tok.settings().chat_template, gguf);
    const auto xs = ftune::train::encode(tok, ftune::data::read_jsonl(data), &tmpl);
    std::size_t tokens = 0;
    for (const auto& x : xs) tokens += x.ids.size();
    for (const bool bucket : {false, true})
        for (const std::size_t batch : {8, 16}) {
            std::size_t padded = 0, positions = 0;
            for (std::size_t epoch = 0; epoch < 3; ++epoch)
                for (const auto& b :
                     ftune::train::batch_order(xs, batch, true, bucket, 42, epoch)) {
                    std::size_t longest = 0, sum = 0;
                    for (const auto i : b)
                        longest = std::max(longest, xs[i].ids.size()), sum += xs[i].ids.size();
                    padded += longest * b.size() - sum, positions += longest * b.size();
                }
            std::printf("%s, batch %zu: %zu examples of %.1f tokens on average, padding %.1f%%\n",
                        bucket ? "bucketed by length" : "shuffled only", batch, xs.size(),
                        double(tokens) / double(xs.size()),
                        100.0 * double(padded) / double(positions));
        }
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
}

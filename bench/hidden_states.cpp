// ftune_hidden_states: the last hidden states of a Hugging Face BERT model for each line of
// stdin, written to a safetensors file, so that a script can compare them with Transformers'
// (tests/reference/real_checkpoint.py).
//
//   ftune_hidden_states --model DIR --out FILE.safetensors [--batch-size N] < sentences.txt
//
// FILE holds "hidden" (total tokens, C): the states of every real token ([CLS] ... [SEP], no
// padding) of line 0, then line 1, ...; and "lengths" (lines), token counts as float32. Lines are
// processed in padded batches, as an application would.
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include <ftune/io/hf.hpp>

int main(int argc, char** argv) {
    std::string model, out;
    std::size_t batch = 32;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i];
        if (a == "--model")
            model = argv[i + 1];
        else if (a == "--out")
            out = argv[i + 1];
        else if (a == "--batch-size")
            batch = std::stoul(argv[i + 1]);
    }
    if (model.empty() || out.empty()) {
        std::cerr << "usage: ftune_hidden_states --model DIR --out FILE.safetensors "
                     "[--batch-size N] < lines\n";
        return 2;
    }
    try {
        auto m = ftune::io::load_hf<ftune::bert::model<>>(model);
        if (!m.tokenizer) throw ftune::error(ftune::errc::io, model, "no tokenizer");
        m.model.prepare_inference();
        std::vector<std::string> lines;
        for (std::string l; std::getline(std::cin, l);) lines.push_back(l);
        std::vector<float> hidden;
        std::vector<std::int32_t> lengths;
        ftune::context eval;
        for (std::size_t first = 0; first < lines.size(); first += batch) {
            const std::size_t B = std::min(batch, lines.size() - first);
            std::vector<std::string_view> texts(lines.begin() + std::ptrdiff_t(first),
                                                lines.begin() + std::ptrdiff_t(first + B));
            const auto enc = m.tokenizer->encode_batch(
                texts, {},
                {.max_length = m.model_max_length, .pad = ftune::text::padding::longest});
            const std::size_t T = enc.front().ids.size();
            std::vector<ftune::token_id> ids, mask;
            for (const auto& e : enc) {
                ids.insert(ids.end(), e.ids.begin(), e.ids.end());
                mask.insert(mask.end(), e.attention_mask.begin(), e.attention_mask.end());
            }
            const auto h = m.model.forward(eval, {ids.data(), B, T}, {mask.data(), B, T});
            const std::size_t C = h.extent(2);
            for (std::size_t b = 0; b < B; ++b) {
                std::int32_t n = 0;
                for (std::size_t t = 0; t < T; ++t) n += mask[b * T + t];
                lengths.push_back(n);
                const float* row = h.data() + b * T * C;
                hidden.insert(hidden.end(), row, row + std::size_t(n) * C);
            }
        }
        const std::size_t C = m.config.model.hidden_size;
        std::vector<float> len_f(lengths.begin(), lengths.end());
        ftune::io::write_safetensors(
            out, {{"hidden", {hidden.size() / C, C}, hidden}, {"lengths", {len_f.size()}, len_f}});
        std::cerr << lines.size() << " lines, " << hidden.size() / C << " tokens -> " << out
                  << "\n";
    } catch (const ftune::error& e) {
        std::cerr << e.what() << "\n";
        return 1;
    }
    return 0;
}

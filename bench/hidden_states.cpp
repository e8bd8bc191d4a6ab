// ftune_hidden_states: the last hidden states of a Hugging Face BERT model for each line of
// stdin, or of a Llama-family GGUF for each line of token ids, written to a safetensors file, so
// that a script can compare them with Transformers' (tests/reference/real_checkpoint.py,
// tests/reference/smollm2_gguf_check.py).
//
//   ftune_hidden_states --model DIR --out FILE.safetensors [--batch-size N] < sentences.txt
//   ftune_hidden_states --gguf FILE.gguf --out FILE.safetensors < ids.txt   (one sequence of
//                       space-separated token ids per line, each run alone: no padding)
//
// FILE holds "hidden" (total tokens, C): the states of every real token ([CLS] ... [SEP], no
// padding) of line 0, then line 1, ...; and "lengths" (lines), token counts as float32. Lines are
// processed in padded batches, as an application would.
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <ftune/io/gguf_llama.hpp>
#include <ftune/io/hf.hpp>

namespace {
// the GGUF mode: every line of ids through a Llama-family decoder, one sequence at a time
int gguf_hidden_states(const std::string& path, const std::string& out) {
    const ftune::io::gguf_file f(path);
    const auto cfg = ftune::io::llama_config_from_gguf(f);
    ftune::llama::decoder<float> model(cfg);
    ftune::io::load_llama_gguf(model, f, cfg);
    std::vector<float> hidden, lengths;
    ftune::context eval;
    for (std::string line; std::getline(std::cin, line);) {
        std::vector<ftune::token_id> ids;
        std::istringstream in(line);
        for (ftune::token_id id; in >> id;) ids.push_back(id);
        if (ids.empty()) continue;
        const auto h = model.forward(eval, {ids.data(), 1, ids.size()});
        hidden.insert(hidden.end(), h.data(), h.data() + h.size());
        lengths.push_back(float(ids.size()));
    }
    const std::size_t C = cfg.hidden_size;
    ftune::io::write_safetensors(
        out, {{"hidden", {hidden.size() / C, C}, hidden}, {"lengths", {lengths.size()}, lengths}});
    std::cerr << lengths.size() << " sequences, " << hidden.size() / C << " tokens -> " << out
              << "\n";
    return 0;
}
}  // namespace

int main(int argc, char** argv) {
    std::string model, out, gguf;
    std::size_t batch = 32;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i];
        if (a == "--model")
            model = argv[i + 1];
        else if (a == "--gguf")
            gguf = argv[i + 1];
        else if (a == "--out")
            out = argv[i + 1];
        else if (a == "--batch-size")
            batch = std::stoul(argv[i + 1]);
    }
    if ((model.empty() && gguf.empty()) || out.empty()) {
        std::cerr << "usage: ftune_hidden_states --model DIR --out FILE.safetensors "
                     "[--batch-size N] < lines\n"
                     "       ftune_hidden_states --gguf FILE.gguf --out FILE.safetensors < ids\n";
        return 2;
    }
    try {
        if (!gguf.empty()) return gguf_hidden_states(gguf, out);
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

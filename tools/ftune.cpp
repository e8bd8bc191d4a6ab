// The ftune command-line tool. Subcommands are added by the issues that define them
// (bench, tokenize, predict, info, train, eval, generate); this file dispatches.
#include <csignal>
#include <cstring>
#include <sstream>
#include <string>
#include <iostream>
#include <string_view>

#include <ftune/ftune.hpp>

#include "bench_cmd.hpp"
#include "embed_cmd.hpp"
#include "generate_cmd.hpp"
#include "predict_cmd.hpp"
#include "repository_cmd.hpp"
#include "retrain_cmd.hpp"
#if FTUNE_WITH_HTTPLIB
#include "serve_cmd.hpp"
#endif
#include "system_cmd.hpp"
#include "tokenize_cmd.hpp"
#include "train_cmd.hpp"

namespace {

// Prints the usage text.
void usage(std::ostream& os) {
    os << "usage: ftune <command> [options]\n"
          "\n"
          "commands:\n"
          "  version     print the version\n"
          "  env         print the build configuration (SIMD level, threads, CUDA)\n"
          "  bench       time a random BERT encoder with a 2-way classifier:\n"
          "              --dims H,L,HEADS,FFN [--vocab V] [--batch B] [--seq T]\n"
          "              [--mode forward|backward|train] [--steps N] [--threads N]\n"
          "              [--prepack on|off]  (forward: weights packed once; default on)\n"
          "              [--lora-r R [--versus full] [--pack-frozen on|off]]  (train: a LoRA\n"
          "              step; beside the full step; frozen weights packed once, default on)\n"
          "              [--precision fp32|bf16 [--versus fp32]]  (bf16 products, fp32 sums;\n"
          "              beside the fp32 step)\n"
          "              or a causal LM of a Llama GGUF file's shapes (random weights):\n"
          "              --gguf FILE [--batch B] [--seq T] [--mode train|forward]\n"
          "  tokenize    BERT WordPiece ids of each line of stdin, [CLS] first and [SEP] last:\n"
          "              (--vocab FILE [--lowercase | --no-lowercase] | --model DIR)\n"
          "              [--max-length N] [--tokens] [--offsets]\n"
          "              or byte-level BPE ids (decoders), nothing added:\n"
          "              (--bpe TOKENIZER.json | --model DIR|FILE.gguf) [--tokens] [--offsets]\n"
          "              (--offsets: each token as ID@BEGIN:END, in characters of the line)\n"
          "  predict     predictions of a fine-tuned model for each line of stdin (a TAB\n"
          "              separates the texts of a pair; QA: question TAB context): --model DIR\n"
          "              [--format logits|labels|json] [--batch-size N] [--max-length N]\n"
          "              [--adapter DIR]  (a LoRA adapter on --model, merged once)\n"
          "              [--precision fp32|bf16]  (bf16: weights rounded once, fp32 sums)\n"
          "              QA: [--top-k N] [--max-answer-length TOKENS] [--doc-stride TOKENS]\n"
          "              NER: one tag per word, a word being a whitespace-separated part of\n"
          "              the line (as in the CoNLL files it was trained on)\n"
          "  embed       sentence embeddings of each line of stdin (sentence-transformers'\n"
          "              pooling and normalization), one JSON array a line: --model DIR\n"
          "              [--format json|tsv] [--normalize yes|no] [--batch-size N]\n"
          "              [--max-length N] [--precision fp32|bf16]; or semantic search:\n"
          "              --search FILE [--top-k N] (FILE's lines ranked for each line, cosine)\n"
          "  info        what a Hugging Face model directory or a GGUF file holds:\n"
          "              --model DIR|FILE.gguf; or --system: the CPU, its caches, peaks\n"
          "  train       fine-tune a Hugging Face model on a TSV/CSV file (ner: CoNLL; mlm and\n"
          "              causal-lm: plain text lines; qa: SQuAD JSON; chat: JSON lines):\n"
          "              --model DIR --train FILE [--valid FILE] --out DIR\n"
          "              [--task classify|multilabel|regression|ner|mlm|qa|causal-lm|chat|\n"
          "              relation]  (relation: sentences marking <e1>..</e1> and <e2>..</e2>,\n"
          "              a TSV/CSV with a relation or label column, or SemEval-2010 Task 8's\n"
          "              .TXT files; the official macro-F1 is the selection metric)\n"
          "              [--epochs N]"
          " [--lr F] [--batch-size N] [--max-length N] [--seed N] [--warmup-ratio F]\n"
          "              [--weight-decay F] [--freeze none|embeddings|layers:N|encoder]\n"
          "              [--early-stopping PATIENCE] [--eval-every STEPS] [--grad-accum N]\n"
          "              [--schedule linear|cosine|constant|polynomial]\n"
          "              [--optimizer adamw|sgd] [--momentum F]\n"
          "              [--checkpoint-every STEPS] [--stop-after STEPS] [--resume "
          "DIR/checkpoint]\n"
          "              [--max-train-examples N]  (the first N rows or sentences)\n"
          "              [--threads N]  data-parallel: mpirun -np N ftune train ... (rank 0\n"
          "              writes; one thread per rank) [--dist-timeout S (600)];\n"
          "              [--virtual-ranks N]: one process computing what N ranks do\n"
          "              [--peft none|lora|bitfit|head]  (lora: saves a PEFT adapter in --out)\n"
          "              lora: [--lora-r N] [--lora-alpha F] [--lora-dropout F]\n"
          "              [--lora-targets query,value] [--lora-modules-to-save M,..|none]\n"
          "              [--lora-bias none|all|lora_only]\n"
          "              [--pack-frozen on|off]  (frozen weights packed once; default on)\n"
          "              [--precision fp32|bf16]  (bf16: mixed precision, fp32 master weights;\n"
          "              needs AVX512-BF16)\n"
          "              [--device cpu|cuda|cuda:N]  (a GPU: CUDA builds; every task but\n"
          "              relation, --peft lora too; docs/cuda.md)\n"
          "              chat: [--eval-generate N (replies scored, default 100)]\n"
          "              [--max-new-tokens N]\n"
          "  eval        the evaluation report of a model on a file: --model DIR --data FILE\n"
          "              [--task ...] [--batch-size N] [--max-length N] [--adapter DIR]\n"
          "              [--precision fp32|bf16] [--threads N] [--device cpu|cuda|cuda:N]\n"
          "              [--eval-generate N] [--max-new-tokens N]\n"
          "  merge       a LoRA adapter merged into its base model, saved as a Hugging Face\n"
          "              model: --model DIR|FILE.gguf --adapter DIR --out DIR [--task ...]\n"
          "  generate    text from a decoder language model, streamed to stdout:\n"
          "              --model DIR|FILE.gguf (--prompt TEXT | --chat [--system TEXT])\n"
          "              [--max-new-tokens N] [--temperature F (0: greedy)] [--top-k N]\n"
          "              [--top-p F] [--repetition-penalty F] [--seed N] [--stop TEXT]...\n"
          "              [--threads N] [--stats] [--precision fp32|bf16]  (--chat: one user\n"
          "              message per line of stdin, in the model's chat template; --prompt:\n"
          "              the text as it is)\n"
          "  serve       a sequence classifier over HTTP/JSON, Text Embeddings Inference's\n"
          "              endpoints (POST /predict, GET /info /health /metrics), batched\n"
          "              dynamically; a repository's promoted version reloaded when it changes:\n"
          "              --model DIR [--host H] [--port N (0: any)] [--max-batch N]\n"
          "              [--max-wait-us N] [--max-queue N] [--workers N] [--threads N]\n"
          "              [--http-threads N] [--max-client-batch N] [--max-bytes N]\n"
          "              [--max-length N] [--auto-truncate true|false] [--timeout-ms N]\n"
          "              [--reload-ms N] [--precision fp32|bf16]\n"
          "  promote     put a version of a model repository (DIR/versions/NAME) in service,\n"
          "              atomically: --model DIR --version NAME; without --version, list them\n"
          "  retrain     fine-tune the version in service again on new data plus replayed old\n"
          "              data; promote the result only if it beats it on held-out data:\n"
          "              --model DIR --new FILE --holdout FILE [--replay FILE]\n"
          "              [--replay-ratio F] [--metric auto|accuracy|f1|loss] [--margin F]\n"
          "              [--task T] [--version NAME] [options of train: --epochs N --lr F ...]\n"
          "              (classify, multilabel, regression on TSV/CSV; ner on CoNLL)\n"
          "  rollback    the version in service before the current one back in service:\n"
          "              --model DIR [--to NAME]\n"
          "  help        print this text\n";
}

// Prints the build configuration as one JSON line.
int cmd_env() {
    std::cout << "{\"version\": \"" << ftune::version_string << "\", \"simd\": \""
              << FTUNE_STRINGIFY_VALUE(FTUNE_ABI_ARCH) << "\", \"simd_float_lanes\": "
              << ftune::backends::cpu::detail::width<float> << ", \"openmp\": "
              << (ftune::has_openmp ? "true" : "false") << ", \"threads\": " << ftune::num_threads()
              << ", \"cuda\": " << (ftune::has_cuda ? "true" : "false") << "}\n";
    return 0;
}

// Parses `ftune bench` options and runs it.
int cmd_bench(int argc, char** argv) {
    std::size_t dims[4] = {0, 0, 0, 0}, vocab = 30522, batch = 16, seq = 128;
    bool backward = true, train = false;
    int steps = 10, threads = 0;
    bool have_dims = false, prepack = true;
    std::string gguf;          // --gguf: a decoder's shapes instead of --dims
    bool mode_set = false;     // --mode given (a decoder's default is train)
    std::size_t lora_r = 0;    // --lora-r: a LoRA training step (adapters on query and value)
    bool versus_full = false;  // --versus full: the full step and the LoRA step alternately
    bool pack_frozen = true;   // --pack-frozen off: frozen weights packed per call
    ftune::precision precision = ftune::precision::fp32;  // --precision bf16: bf16 products
    bool versus_fp32 = false;  // --versus fp32: the fp32 step and the bf16 step alternately
    for (int i = 2; i < argc; ++i) {
        const std::string_view a = argv[i];
        if (i + 1 >= argc)
            throw ftune::error(ftune::errc::invalid_argument, std::string(a), "expects a value");
        const std::string v = argv[++i];
        auto number = [&](std::size_t least) {  // a whole number >= least, or a clear error
            std::size_t pos = 0;
            unsigned long n = 0;
            try {
                n = std::stoul(v, &pos);
            } catch (const std::exception&) {
                pos = 0;
            }
            if (pos == 0 || pos != v.size() || v[0] == '-' || n < least)
                throw ftune::error(ftune::errc::invalid_argument, std::string(a) + " " + v,
                                   ftune::detail::cat("expects a whole number >= ", least));
            return std::size_t(n);
        };
        if (a == "--dims") {
            std::istringstream in(v);
            char comma;
            have_dims =
                bool(in >> dims[0] >> comma >> dims[1] >> comma >> dims[2] >> comma >> dims[3]);
            if (!have_dims)
                throw ftune::error(ftune::errc::invalid_argument, "--dims " + v,
                                   "expected H,L,HEADS,FFN, e.g. --dims 384,12,12,1536");
        } else if (a == "--vocab")
            vocab = number(1);
        else if (a == "--batch")
            batch = number(1);
        else if (a == "--seq")
            seq = number(1);
        else if (a == "--steps")
            steps = int(std::min<std::size_t>(number(1), 1u << 30));
        else if (a == "--threads")
            threads = int(std::min<std::size_t>(number(0), 4096));
        else if (a == "--prepack") {
            if (v != "on" && v != "off")
                throw ftune::error(ftune::errc::invalid_argument, "--prepack " + v,
                                   "expected on or off");
            prepack = v == "on";
        } else if (a == "--gguf") {
            gguf = v;
        } else if (a == "--lora-r") {
            lora_r = number(1);
        } else if (a == "--pack-frozen") {
            if (v != "on" && v != "off")
                throw ftune::error(ftune::errc::invalid_argument, "--pack-frozen " + v,
                                   "expected on or off");
            pack_frozen = v == "on";
        } else if (a == "--precision") {
            precision = cli::parse_precision("--precision", v);
        } else if (a == "--versus") {
            if (v != "full" && v != "fp32")
                throw ftune::error(ftune::errc::invalid_argument, "--versus " + v,
                                   "expected full (the full step beside the LoRA step) or fp32 "
                                   "(the fp32 step beside the bf16 step)");
            (v == "full" ? versus_full : versus_fp32) = true;
        } else if (a == "--mode") {
            if (v != "forward" && v != "backward" && v != "train")
                throw ftune::error(ftune::errc::invalid_argument, "--mode " + v,
                                   "expected forward, backward or train");
            backward = v != "forward";
            train = v == "train";
            mode_set = true;
        } else {
            throw ftune::error(ftune::errc::invalid_argument, std::string(a),
                               "unknown option of ftune bench");
        }
    }
    if (!gguf.empty()) {
        if (!mode_set) train = true;
        if (mode_set && backward && !train)
            throw ftune::error(ftune::errc::invalid_argument, "--gguf",
                               "a decoder is timed with --mode train or forward");
        return cli::run_bench_lm(gguf, batch, seq, train, steps, threads, precision);
    }
    if (!have_dims)
        throw ftune::error(ftune::errc::invalid_argument, "ftune bench",
                           "--dims H,L,HEADS,FFN (or --gguf FILE) is required");
    if (lora_r && !train)
        throw ftune::error(ftune::errc::invalid_argument, "--lora-r",
                           "times a LoRA training step: give --mode train");
    if (versus_full && !lora_r)
        throw ftune::error(ftune::errc::invalid_argument, "--versus full",
                           "compares the LoRA step with the full one: give --lora-r R");
    if (versus_fp32 && precision != ftune::precision::bf16)
        throw ftune::error(ftune::errc::invalid_argument, "--versus fp32",
                           "compares the bf16 step with the fp32 one: give --precision bf16");
    if (versus_fp32 && versus_full)
        throw ftune::error(ftune::errc::invalid_argument, "--versus", "give one of full and fp32");
    return cli::run_bench(dims[0], dims[1], dims[2], dims[3], vocab, batch, seq, backward, steps,
                          threads, prepack, train, lora_r, versus_full, pack_frozen, precision,
                          versus_fp32);
}

}  // namespace

int main(int argc, char** argv) {
    // a file-size limit (RLIMIT_FSIZE) or a full disk makes a write fail, reported as an error
    // naming the file, instead of SIGXFSZ killing the process mid-save
#ifdef SIGXFSZ
    std::signal(SIGXFSZ, SIG_IGN);
#endif
    if (argc < 2) {
        usage(std::cerr);
        return 2;
    }
    const std::string_view cmd = argv[1];
    try {
        if (cmd == "version" || cmd == "--version") {
            std::cout << "ftune " << ftune::version_string << "\n";
            return 0;
        }
        if (cmd == "env") return cmd_env();
        if (cmd == "bench") return cmd_bench(argc, argv);
        if (cmd == "tokenize") return cli::run_tokenize(argc, argv);
        if (cmd == "predict") return cli::run_predict(argc, argv);
        if (cmd == "embed") return cli::run_embed(argc, argv);
        if (cmd == "info" && argc == 3 && std::string_view(argv[2]) == "--system")
            return cli::run_system_info();
        if (cmd == "info") return cli::run_info(argc, argv);
        if (cmd == "train") return cli::run_train(argc, argv);
        if (cmd == "eval") return cli::run_eval(argc, argv);
        if (cmd == "merge") return cli::run_merge(argc, argv);
        if (cmd == "generate") return cli::run_generate(argc, argv);
        if (cmd == "promote") return cli::run_promote(argc, argv);
        if (cmd == "retrain") return cli::run_retrain(argc, argv);
        if (cmd == "rollback") return cli::run_rollback(argc, argv);
        if (cmd == "serve") {
#if FTUNE_WITH_HTTPLIB
            return cli::run_serve(argc, argv);
#else
            throw ftune::error(ftune::errc::unsupported, "ftune serve",
                               "this ftune was built without cpp-httplib: install "
                               "libcpp-httplib-dev and pkg-config, then rebuild");
#endif
        }
        if (cmd == "help" || cmd == "--help" || cmd == "-h") {
            usage(std::cout);
            return 0;
        }
        std::cerr << "ftune: unknown command '" << cmd << "'\n";
        usage(std::cerr);
        return 2;
    } catch (const ftune::error& e) {
        std::cerr << e.what() << "\n";
        return 1;
    } catch (const std::exception& e) {  // anything else (out of memory...): a message, status 1
        std::cerr << "ftune " << cmd << ": " << e.what() << "\n";
        return 1;
    }
}

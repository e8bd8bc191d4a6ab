// Data-parallel fine-tuning from C++: the SST-2 recipe of sentiment_sst2.cpp on N processes
// (one machine or several) under an MPI launcher. Every rank loads the same model and data; the
// trainer gives each rank its rows of every batch, sums the gradients over the ranks while
// backward runs, and takes the same step everywhere; rank 0 prints and saves. Built when CMake
// finds MPI (Debian: libopenmpi-dev openmpi-bin).
//
//   mpirun -np 2 data_parallel --model all-MiniLM-L6-v2 --data ../shared/data
//          [--max-train 20000] [--epochs 1] [--out sst2-model]
#include <algorithm>
#include <filesystem>
#include <iostream>
#include <string>

#include <ftune/dist/mpi.hpp>
#include <ftune/io.hpp>
#include <ftune/train/trainer.hpp>

namespace fs = std::filesystem;
using Model = ftune::bert::sequence_classifier<>;

int main(int argc, char** argv) {
    ftune::dist::mpi_session mpi(argc, argv);  // MPI_Init ... MPI_Finalize (MPI_Abort on error)
    ftune::dist::mpi_group ranks;              // the processes of the job
    try {
        fs::path model_dir, data = "../shared/data", out;
        std::size_t max_train = 20000, epochs = 1;
        for (int i = 1; i + 1 < argc; i += 2) {
            const std::string k = argv[i], v = argv[i + 1];
            if (k == "--model")
                model_dir = v;
            else if (k == "--data")
                data = v;
            else if (k == "--max-train")
                max_train = std::stoul(v);
            else if (k == "--epochs")
                epochs = std::stoul(v);
            else if (k == "--out")
                out = v;
            else
                throw ftune::error(ftune::errc::invalid_argument, k, "unknown option");
        }
        if (model_dir.empty())
            throw ftune::error(ftune::errc::invalid_argument, "--model", "give a model directory");
        const bool first = ranks.rank() == 0;  // the rank that prints and writes

        // 1. Every rank: the same checkpoint (the same seed: the same new head) and data.
        const std::vector<std::string> names = {"0", "1"};
        auto m = ftune::io::load_hf<Model>(model_dir, {.labels = names});
        auto train_rows = ftune::data::read_table(data / "sst2" / "train.tsv");
        if (train_rows.rows.size() > max_train) train_rows.rows.resize(max_train);
        const auto dev_rows = ftune::data::read_table(data / "sst2" / "dev.tsv");
        const auto problem = ftune::heads::problem::single_label_classification;
        const std::size_t max_len = std::min<std::size_t>(128, m.model_max_length);
        const auto train = ftune::train::encode(*m.tokenizer, train_rows, problem, names, max_len);
        const auto dev = ftune::train::encode(*m.tokenizer, dev_rows, problem, names, max_len);

        // 2. The recipe of one process, with the group: batch_size stays the global batch.
        ftune::train::trainer<Model> t(m.model, {.epochs = epochs,
                                                 .batch_size = 32,
                                                 .lr = 1e-4,
                                                 .weight_decay = 0.01,
                                                 .warmup_ratio = 0.1,
                                                 .progress = first ? &std::cerr : nullptr,
                                                 .group = &ranks});
        const auto result = t.fit(train, dev);

        // 3. The evaluation is a collective (each rank scores a share of the batches): every
        //    rank calls it, and every rank gets the whole report.
        const auto scores = t.evaluate(dev);
        if (first) {
            std::cout << ranks.size() << " ranks trained " << result.steps << " steps in "
                      << result.seconds << " s (" << result.sum_wait_seconds
                      << " s waiting for gradient sums)\n"
                      << ftune::metrics::classification_report(scores.gold, scores.predicted,
                                                               {"negative", "positive"});
            if (!out.empty()) ftune::io::save_hf(m, out);  // rank 0 writes the model
        }
        return 0;
    } catch (const std::exception& e) {  // the other ranks may wait for this one: stop them all
        std::cerr << e.what() << " (rank " << ranks.rank() << ")\n";
        ranks.abort(1);
    }
}

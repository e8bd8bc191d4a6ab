// The gradient sum of data-parallel training on this machine's link: dist::mpi_group's ordered
// sum against MPI_Allreduce (the MPI library's own order), for vectors from 256 KiB to the
// gradients of MiniLM-L12-H384 (33.4 M floats) and BERT-base (109.5 M floats). Rank 0 prints
// one JSON line per size: seconds per sum (median of the repeats), algorithm bandwidth
// (bytes / s) and bus bandwidth (2 (N - 1) / N bytes / s, what each rank's link carries, as
// nccl-tests report it): the link's measured bandwidth that docs/distributed.md models with.
//   mpirun -np 2 --oversubscribe build/bin/ftune_bench_dist_sum [MAX_FLOATS]
// (as root, Open MPI also wants OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1).
#include <ftune/dist/mpi.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char** argv) {
    ftune::dist::mpi_session mpi(argc, argv);
    ftune::dist::mpi_group g;
    const std::size_t most = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 109'500'000;
    const std::size_t N = g.size();
    std::vector<std::size_t> sizes{1 << 16, 1 << 18,    1 << 20,    1 << 22,
                                   1 << 24, 33'400'000, 109'500'000};
    std::erase_if(sizes, [&](std::size_t n) { return n > most; });
    for (const std::size_t n : sizes) {
        std::vector<float> x(n, 1.0f);
        const int repeats = n <= (1 << 20) ? 20 : n <= (1 << 24) ? 5 : 3;
        auto median = [&](auto run) {
            std::vector<double> t;
            run();  // warm-up
            for (int k = 0; k < repeats; ++k) {
                g.barrier();
                const auto t0 = std::chrono::steady_clock::now();
                run();
                t.push_back(
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
            }
            std::sort(t.begin(), t.end());
            return t[t.size() / 2];
        };
        const double ordered = median([&] { g.sum(x); });
        const double mpi_sum = median([&] {
            MPI_Allreduce(MPI_IN_PLACE, x.data(), int(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        });
        if (g.rank() == 0) {
            const double bytes = double(n) * sizeof(float), bus = 2.0 * double(N - 1) / double(N);
            std::printf(
                "{\"ranks\": %zu, \"floats\": %zu, \"bytes\": %.0f, \"ordered_s\": %.6g, "
                "\"ordered_algbw_GBps\": %.4g, \"ordered_busbw_GBps\": %.4g, "
                "\"mpi_allreduce_s\": %.6g, \"mpi_allreduce_busbw_GBps\": %.4g}\n",
                N, n, bytes, ordered, bytes / ordered / 1e9, bus * bytes / ordered / 1e9, mpi_sum,
                bus * bytes / mpi_sum / 1e9);
            std::fflush(stdout);
        }
    }
    return 0;
}

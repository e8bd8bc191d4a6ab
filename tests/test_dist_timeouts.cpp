// dist::mpi_group under `mpirun -np N` (ctest runs N = 2 and N = 3): a rank that comes late to
// an all-gather, a barrier or a broadcast from it makes the others throw errc::timeout naming it
// ("waited more than ... for rank(s) N-1"), whatever collective they were in (a stopped rank is
// otherwise named only by the gradient sum), and the late rank then completes the collective.
// The late rank joins only after every other rank has timed out (it waits for their word on
// MPI_COMM_WORLD), so the check does not depend on the machine's speed. Prints "dist timeouts:
// all checks passed" on rank 0 and exits 0 when every rank passed.
#include <ftune/dist/mpi.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

int main(int argc, char** argv) {
    ftune::dist::mpi_session session(argc, argv);
    ftune::dist::mpi_group g;
    const std::size_t me = g.rank(), N = g.size(), late = N - 1;
    int failures = 0;
    const char* names[] = {"an all-gather", "a barrier", "a broadcast"};
    for (int op = 0; op < 3; ++op) {
        g.set_timeout(std::chrono::milliseconds(60000));
        MPI_Barrier(MPI_COMM_WORLD);  // MPI's own: the group's is one of the checks
        auto run = [&] {
            if (op == 0) {
                const auto all = g.all_gather(std::vector<double>{double(me), 1.0});
                for (std::size_t r = 0; r < N; ++r)
                    if (all.at(2 * r) != double(r) || all.at(2 * r + 1) != 1.0) {
                        std::fprintf(stderr, "rank %zu: FAILED: the all-gather's values\n", me);
                        ++failures;
                        break;
                    }
            }
            if (op == 1) g.barrier();
            if (op == 2) {
                std::vector<char> b(me == late ? 5 : 0, 'x');
                g.broadcast(b, late);  // from the late rank: the others wait for it
                if (b != std::vector<char>(5, 'x')) {
                    std::fprintf(stderr, "rank %zu: FAILED: the broadcast's bytes\n", me);
                    ++failures;
                }
            }
        };
        if (me == late) {
            for (std::size_t r = 0; r < late; ++r)  // every other rank has timed out
                MPI_Recv(nullptr, 0, MPI_CHAR, int(r), 900 + op, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            run();  // completes: the others' messages were sent before they gave up
            continue;
        }
        g.set_timeout(std::chrono::milliseconds(2000));  // the other ranks' messages come first
        std::string what;
        try {
            run();
            what = "no timeout";
        } catch (const ftune::error& e) {
            what = e.what();
            if (e.id() != ftune::errc::timeout) what += " (not errc::timeout)";
        }
        const std::string want = std::string(names[op]) + " waited more than 2000 ms for rank(s) " +
                                 std::to_string(late);
        if (what.find(want) == std::string::npos || what.find("not errc") != std::string::npos) {
            std::fprintf(stderr, "rank %zu: FAILED: %s: \"%s\", not \"%s\"\n", me, names[op],
                         what.c_str(), want.c_str());
            ++failures;
        }
        MPI_Send(nullptr, 0, MPI_CHAR, int(late), 900 + op, MPI_COMM_WORLD);
    }
    // the verdict through MPI itself: after a timeout the group's collectives are abandoned
    // (a broadcast's second message never posted), and a job goes on only to abort
    int total = 0;
    MPI_Reduce(&failures, &total, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
    if (me == 0) {
        if (total == 0)
            std::printf("dist timeouts: all checks passed (%zu ranks)\n", N);
        else
            std::printf("dist timeouts: %d checks FAILED\n", total);
        std::fflush(stdout);
    }
    // The late rank completed every collective the others abandoned, so nothing is pending:
    // end with MPI_Finalize rather than the MPI_Abort that mpi_session runs after a timeout
    // (Open MPI 4's mpiexec can crash when several ranks abort at once).
    MPI_Barrier(MPI_COMM_WORLD);
    ftune::dist::detail::stranded_collectives = 0;
    return total == 0 ? 0 : 1;
}

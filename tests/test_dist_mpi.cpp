// dist::mpi_group under `mpirun -np N` (ctest runs N = 2 and N = 3): the ordered sum equals
// dist::ordered_sum of every rank's part computed in one process, bit for bit, for lengths
// shorter than N up to a million, several sums in flight at once, -0 kept; all_gather and
// broadcast; gradient_reducer's buckets (only_rows too); a rank that does not take part gives
// errc::timeout naming it, and the sum completes once it joins. Exits 0 and prints "dist: all
// checks passed" on rank 0 when every rank passed.
#include <ftune/dist/mpi.hpp>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

int failures = 0;

void expect(bool ok, const std::string& what, std::size_t rank) {
    if (ok) return;
    std::fprintf(stderr, "rank %zu: FAILED: %s\n", rank, what.c_str());
    ++failures;
}

// Rank r's element i: values over many magnitudes and both signs, so the order of the sum shows
// in the last bits.
float value(std::size_t r, std::size_t i, std::uint32_t salt) {
    std::uint32_t h = std::uint32_t(i * 2654435761u) ^ std::uint32_t(r * 40503u + salt * 977u);
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    const float m = float(h & 0xffff) / 65536.0f - 0.5f;
    return std::ldexp(m, int((h >> 16) % 40) - 20);
}

std::vector<float> part(std::size_t r, std::size_t n, std::uint32_t salt) {
    std::vector<float> x(n);
    for (std::size_t i = 0; i < n; ++i) x[i] = value(r, i, salt);
    return x;
}

// What the ordered sum must give: every rank's part, added in rank order in this process.
std::vector<float> expected(std::size_t N, std::size_t n, std::uint32_t salt) {
    std::vector<std::vector<float>> all;
    std::vector<std::span<const float>> spans;
    for (std::size_t r = 0; r < N; ++r) all.push_back(part(r, n, salt));
    for (const auto& a : all) spans.emplace_back(a);
    std::vector<float> out(n);
    ftune::dist::ordered_sum(spans, out);
    return out;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace

int main(int argc, char** argv) {
    ftune::dist::mpi_session mpi(argc, argv);
    ftune::dist::mpi_group g;
    const std::size_t me = g.rank(), N = g.size();
    expect(N >= 2 && me < N, "run under mpirun -np 2 or more", me);

    // ordered sums of many lengths, bit for bit
    for (const std::size_t n :
         {std::size_t(0), std::size_t(1), N - 1, N, std::size_t(1000), std::size_t(1'000'003)}) {
        auto x = part(me, n, std::uint32_t(n));
        g.sum(x);
        expect(same_bits(x, expected(N, n, std::uint32_t(n))),
               "ordered sum of " + std::to_string(n) + " floats", me);
    }
    if (N >= 3) {  // the order shows (with 3 or more parts; a + b is b + a): summed the other
                   // way round the bits differ somewhere
        const std::size_t n = 100000;
        auto want = expected(N, n, 7);
        std::vector<std::vector<float>> all;
        for (std::size_t r = N; r-- > 0;) all.push_back(part(r, n, 7));
        std::vector<std::span<const float>> spans(all.begin(), all.end());
        std::vector<float> reversed(n);
        ftune::dist::ordered_sum(spans, reversed);
        expect(!same_bits(want, reversed), "the data shows the order of the sum", me);
    }
    {  // three sums in flight, finished in another order than started (and than other ranks)
        std::vector<std::vector<float>> xs;
        for (std::uint32_t k = 0; k < 3; ++k) xs.push_back(part(me, 5000 + k, 100 + k));
        std::vector<std::unique_ptr<ftune::dist::pending>> ps;
        for (auto& x : xs) ps.push_back(g.start_sum(x));
        for (int k = 0; k < 3; ++k) g.finish(ps[std::size_t(me % 2 ? k : 2 - k)]);
        for (std::uint32_t k = 0; k < 3; ++k)
            expect(same_bits(xs[k], expected(N, 5000 + k, 100 + k)),
                   "sum " + std::to_string(k) + " of three in flight", me);
    }
    {  // -0 stays -0 (a sum that started from 0 would give +0)
        std::vector<float> z(N + 2, -0.0f);
        g.sum(z);
        bool negative = true;
        for (const float v : z) negative = negative && v == 0 && std::signbit(v);
        expect(negative, "-0 summed over the ranks stays -0", me);
    }
    {  // all_gather and broadcast
        const std::vector<double> mine{double(me), double(me) * 0.5};
        const auto all = g.all_gather(mine);
        bool ok = all.size() == 2 * N;
        for (std::size_t r = 0; ok && r < N; ++r)
            ok = all[2 * r] == double(r) && all[2 * r + 1] == double(r) * 0.5;
        expect(ok, "all_gather", me);
        std::vector<char> b;
        if (me == 0) b.assign({'f', 't', 'u', 'n', 'e'});
        g.broadcast(b, 0);
        expect(std::string(b.begin(), b.end()) == "ftune", "broadcast", me);
    }
    {  // gradient_reducer: 23 tensors in 64 KiB buckets, twice (the second time marked ready
       // in reverse order), each tensor the ordered sum of every rank's
        std::vector<std::size_t> sizes;
        for (std::size_t k = 0; k < 23; ++k) sizes.push_back((k * 7919) % 40000 + (k % 5 == 0));
        for (std::uint32_t step = 0; step < 2; ++step) {
            std::vector<std::vector<float>> grads;
            for (std::size_t k = 0; k < sizes.size(); ++k)
                grads.push_back(part(me, sizes[k], 1000 + 50 * step + std::uint32_t(k)));
            ftune::dist::gradient_reducer reducer(
                g, std::vector<std::span<float>>(grads.begin(), grads.end()), 64 << 10);
            expect(reducer.buckets() > 3, "several buckets", me);
            for (std::size_t k = 0; k < sizes.size(); ++k)
                reducer.ready(step == 0 ? k : sizes.size() - 1 - k);
            reducer.finish();
            for (std::size_t k = 0; k < sizes.size(); ++k)
                expect(
                    same_bits(grads[k], expected(N, sizes[k], 1000 + 50 * step + std::uint32_t(k))),
                    "reducer step " + std::to_string(step) + " tensor " + std::to_string(k), me);
        }
    }
    {  // one reducer over two steps of the same storage
        std::vector<float> a = part(me, 3000, 7), b = part(me, 5, 8);
        ftune::dist::gradient_reducer r(g, {a, b}, 4);
        for (int step = 0; step < 2; ++step) {
            const auto a0 = a, b0 = b;  // this step's parts
            r.ready(0);
            r.ready(1);
            r.finish();
            // every rank held the same a0 after step 0 (a sum), so step 1 gives N x that sum
            if (step == 0) {
                expect(same_bits(a, expected(N, 3000, 7)) && same_bits(b, expected(N, 5, 8)),
                       "reused reducer, step 0", me);
            } else {
                bool ok = true;
                for (std::size_t i = 0; i < a.size(); ++i) {
                    float s = a0[i];
                    for (std::size_t k = 1; k < N; ++k) s += a0[i];
                    ok = ok && std::memcmp(&s, &a[i], sizeof s) == 0;
                }
                expect(ok, "reused reducer, step 1", me);
            }
        }
    }
    {  // only_rows: a (40 x 6) table zero outside rows {1, 7, 39} on every rank, with a dense
       // tensor in the same bucket: the sum of those rows alone equals the dense sum; the
       // next step sums whole tensors again
        const std::vector<std::size_t> rows{1, 7, 39};
        auto sparse = [&](std::uint32_t salt) {
            auto t = part(me, 240, salt);
            std::vector<float> z(240, 0.0f);
            for (const auto r : rows) std::copy_n(t.begin() + r * 6, 6, z.begin() + r * 6);
            return z;
        };
        std::vector<float> dense = part(me, 50, 21), table = sparse(22);
        ftune::dist::gradient_reducer r(g, {dense, table});
        r.only_rows(1, rows, 6);
        r.ready(0);
        r.ready(1);
        r.finish();
        auto want = expected(N, 240, 22);
        for (std::size_t i = 0; i < 240; ++i)
            if (std::find(rows.begin(), rows.end(), i / 6) == rows.end()) want[i] = 0;
        expect(same_bits(dense, expected(N, 50, 21)) && same_bits(table, want),
               "only_rows: the selected rows summed, the others zero", me);
        const auto t2 = part(me, 240, 23), d2 = part(me, 50, 24);  // into the same storage
        std::copy(t2.begin(), t2.end(), table.begin()),
            std::copy(d2.begin(), d2.end(), dense.begin());
        r.ready(0);
        r.ready(1);
        r.finish();
        expect(same_bits(table, expected(N, 240, 23)), "only_rows lasts one step", me);
        bool refused = false;
        try {
            r.only_rows(1, {40}, 6);
        } catch (const ftune::error&) {
            refused = true;
        }
        expect(refused, "only_rows: a row outside the table is an error", me);
    }
    {  // the one-process group leaves the tensors as they are
        ftune::dist::local_group one;
        std::vector<float> a = part(0, 100, 3);
        const auto before = a;
        ftune::dist::gradient_reducer r(one, {a});
        r.ready(0);
        bool twice = false;  // a tensor marked ready twice in a step is an error
        try {
            r.ready(0);
        } catch (const ftune::error& e) {
            twice = e.id() == ftune::errc::invalid_argument;
        }
        expect(twice, "ready() twice refused", me);
        r.finish();
        expect(same_bits(a, before), "local group reducer", me);
    }
    // a rank that does not come: the others time out naming it, then finish once it joins
    g.barrier();
    {
        const std::size_t late = N - 1;
        auto x = part(me, 4096, 55);
        if (me == late) {
            std::this_thread::sleep_for(std::chrono::milliseconds(1500));
            g.sum(x);
        } else {
            g.set_timeout(std::chrono::milliseconds(300));
            auto p = g.start_sum(x);
            bool timed_out = false;
            try {
                g.finish(p);
            } catch (const ftune::error& e) {
                timed_out = e.id() == ftune::errc::timeout &&
                            std::string(e.what()).find("rank(s) " + std::to_string(late)) !=
                                std::string::npos;
                if (!timed_out) std::fprintf(stderr, "rank %zu: %s\n", me, e.what());
            }
            expect(timed_out, "a timeout naming the late rank", me);
            g.set_timeout(std::chrono::milliseconds(60000));
            g.finish(p);  // it came: the same sum completes
        }
        expect(same_bits(x, expected(N, 4096, 55)), "the late sum", me);
    }
    // every rank's verdict, on rank 0
    const auto verdicts = g.all_gather(std::vector<double>{double(failures)});
    double total = 0;
    for (const double v : verdicts) total += v;
    if (me == 0) {
        if (total == 0)
            std::printf("dist: all checks passed (%zu ranks)\n", N);
        else
            std::printf("dist: %g checks failed\n", total);
    }
    return total == 0 ? 0 : 1;
}

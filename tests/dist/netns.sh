#!/usr/bin/env bash
# Two "hosts" on one machine: two network namespaces joined by a veth pair (10.99.0.1 and
# 10.99.0.2), one MPI rank in each, Open MPI launching the second through an rsh agent that
# enters its namespace, and talking over TCP on the veth only. Runs PROGRAM ARGS... as that
# 2-rank job (the ctest test_dist_netns runs test_dist_mpi). Needs root with CAP_NET_ADMIN and
# iproute2; exits 77 (ctest: skipped) saying why where network namespaces cannot be made.
#   tests/dist/netns.sh MPIRUN PROGRAM [ARGS...]
set -euo pipefail
mpirun=$1
shift
ns0=ftune_ns0_$$ ns1=ftune_ns1_$$ v0=ftv0_$$ v1=ftv1_$$
agent=$(mktemp -d)/rsh.sh
cleanup() {
    ip netns del "$ns0" 2>/dev/null || true
    ip netns del "$ns1" 2>/dev/null || true
    rm -rf "$(dirname "$agent")"
}
trap cleanup EXIT
if ! command -v ip >/dev/null || ! ip netns add "$ns0" 2>/dev/null; then
    echo "skipped: network namespaces cannot be made here (needs root, CAP_NET_ADMIN, iproute2)"
    exit 77
fi
ip netns add "$ns1"
ip link add "$v0" type veth peer name "$v1"
ip link set "$v0" netns "$ns0"
ip link set "$v1" netns "$ns1"
ip -n "$ns0" addr add 10.99.0.1/24 dev "$v0"
ip -n "$ns1" addr add 10.99.0.2/24 dev "$v1"
for pair in "$ns0 $v0" "$ns1 $v1"; do
    read -r ns dev <<<"$pair"
    ip -n "$ns" link set lo up
    ip -n "$ns" link set "$dev" up
done
# the rsh agent: HOST COMMAND... runs COMMAND in HOST's namespace
cat >"$agent" <<AGENT
#!/bin/sh
host=\$1; shift
case \$host in
  10.99.0.1) ns=$ns0 ;;
  10.99.0.2) ns=$ns1 ;;
  *) echo "netns.sh: unknown host \$host" >&2; exit 1 ;;
esac
exec ip netns exec \$ns sh -c "\$*"
AGENT
chmod +x "$agent"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
# each rank says where it runs (two different addresses, or this is not two hosts), then the
# program (ob1 with the TCP transport only: nothing goes through shared memory)
net=(--mca pml ob1 --mca btl tcp,self --mca btl_tcp_if_include 10.99.0.0/24
     --mca oob_tcp_if_include 10.99.0.0/24)
# (an environment where MPI cannot start ranks this way at all, e.g. no way for the rsh agent
# to enter a namespace, is a skip, not a failure of ftune)
if ! where=$(ip netns exec "$ns0" "$mpirun" --host 10.99.0.1,10.99.0.2 -np 2 \
    --mca plm_rsh_agent "$agent" "${net[@]}" \
    sh -c 'echo "rank $OMPI_COMM_WORLD_RANK at $(ip -brief -4 addr show | grep -o "10\.99\.0\.[0-9]")"' 2>&1); then
    echo "$where"
    echo "skipped: mpirun could not start one rank in each namespace here"
    exit 77
fi
echo "$where"
[[ $(grep -o "10\.99\.0\.[0-9]" <<<"$where" | sort -u | wc -l) == 2 ]] \
    || { echo "FAILED: the two ranks did not run in the two namespaces"; exit 1; }
ip netns exec "$ns0" "$mpirun" --host 10.99.0.1,10.99.0.2 -np 2 --mca plm_rsh_agent "$agent" \
    "${net[@]}" -x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM -x OMP_NUM_THREADS "$@"
# (not exec: the trap removes the namespaces when the job ends)

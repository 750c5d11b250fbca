# mpi_env.sh: sourced by the MPI tests. Lets Open MPI run as root in a container and start more
# ranks than there are cores (CI machines are small), keeps each rank to one thread, and points
# LeakSanitizer at the suppressions for Open MPI's own allocations (sanitizer build).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_mpi_yield_when_idle=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
export LSAN_OPTIONS="suppressions=$SRC/tests/comm/lsan-mpi.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
# Open MPI's plugins have no frame pointers: the slow unwinder reaches libmpi's frames so that
# the suppressions match (no effect outside the sanitizer build)
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}fast_unwind_on_malloc=0"

# mpi_run NP LOG ARGS...: dstrain under mpirun, at most 300 s; returns mpirun's exit code
mpi_run() {
  local np=$1 log=$2
  shift 2
  timeout 300 mpirun -np "$np" "$DSTRAIN" "$@" >"$log" 2>&1
}

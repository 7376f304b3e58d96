"""The ``swiftdet`` command line (swiftdet/cli/main.py lists the verbs)."""
# OpenMP reads its wait policy when torch loads it, so it is set here, before any verb imports
# torch: waiting threads sleep instead of spinning on cores that other processes need
# (swiftdet/utils/threads.py says what that costs and saves).
from swiftdet.utils.threads import set_passive_openmp_wait

set_passive_openmp_wait()

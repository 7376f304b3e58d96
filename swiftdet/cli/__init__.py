"""The ``swiftdet`` command line (swiftdet/cli/main.py lists the verbs)."""
# OpenMP reads how its threads wait when torch loads it, so this runs before any verb imports
# torch: no long spinning on cores that other processes need (swiftdet/utils/threads.py).
from swiftdet.utils.threads import set_openmp_wait

set_openmp_wait()

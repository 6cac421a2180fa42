"""keep_freed_memory: a freed large tensor's memory is reused without the kernel faulting its pages in again."""

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import resource, sys
    import torch
    from immunofold.allocator import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    def faults_of_a_fresh_tensor():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(16 << 20).fill_(1.0)  # 64 MiB, freed at once
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    faults_of_a_fresh_tensor()
    print(min(faults_of_a_fresh_tensor() for _ in range(3)))
""")


def page_faults(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator settings")
def test_freed_large_tensors_are_reused_without_page_faults():
    pages = (64 << 20) // 4096
    assert page_faults("default") > pages // 2  # glibc's default: the block goes back to the kernel and faults in again
    assert page_faults("keep") < pages // 20

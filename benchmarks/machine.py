"""One line naming the machine a benchmark ran on, printed first by every benchmark: the
CPU, its vector capability as torch sees it (AVX2, AVX512, AVX512_BF16, AMX: bf16 autocast is
~2× faster than float32 with AVX-512 BF16/AMX and ~10× slower without), thread count and
versions. A figure is only comparable with one measured on the same line."""

from __future__ import annotations

import os
import platform


def machine_line() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"# machine: {cpu}, {os.cpu_count()} CPUs, capability "
            f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
            f"{gpu}; torch {torch.__version__}, Python {platform.python_version()}")

"""The memory budget of a run, resolved once: a size as given, or "auto" (the default everywhere),
into bytes and the note that summaries show. One rule for every caller (the Explainer, inspect
--cost, audit's batch sizes).

--memory-budget auto: runs of about AUTO_RUN_BYTES of activation memory. Measured on CPU (1 image,
32 steps, 2 threads, docs/performance.md): resnet50 and vgg16 run as fast in runs of 4-16 steps as
in one of 32 (once later runs skip the score rows), while the depthwise networks want long runs
(mobilenet_v2: 0.86 s in runs of 8 steps, 0.75 s in one of 32, which takes 0.9 GB). About 1 GB
runs both kinds at their speed, with the whole process under Captum's peak on all four. Never more
than a quarter of the memory the machine (or its cgroup) has available."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import UsageError

AUTO_RUN_BYTES = 1 << 30  # auto: the activation memory of one run (see the module docstring)
AUTO_SHARE_OF_AVAILABLE = 4  # auto: never more than a quarter of the available memory
AUTO_GPU_RUN_BYTES = 2 << 30  # not measured on a GPU yet: the fixed default before auto


def parse_bytes(value) -> int | None:
    """'2GB', '512MiB', 1e9 -> bytes; 'auto' -> None (see resolve_budget)."""
    if isinstance(value, (int, float)):
        return int(value)
    if str(value).strip().lower() == "auto":
        return None
    text = str(value).strip().upper().replace("IB", "B")
    for unit, factor in (("KB", 1 << 10), ("MB", 1 << 20), ("GB", 1 << 30), ("TB", 1 << 40), ("B", 1)):
        if text.endswith(unit):
            try:
                return int(float(text[: -len(unit)]) * factor)
            except ValueError:
                break
    try:
        return int(float(text))
    except ValueError:
        raise UsageError(f"cannot read memory budget '{value}'; write auto, or a size such as 2GB or 512MB") from None


def available_memory() -> int | None:
    """Bytes this process can still take: the kernel's MemAvailable, or less where the cgroup of
    this process's namespace (a container) has a limit, less its usage net of the file cache it can
    drop (as docker stats counts it); None where neither can be read (not Linux)."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) << 10 for line in f if line.startswith("MemAvailable:")]
    except OSError:
        pass
    for folder, limit, used, cache in (("/sys/fs/cgroup", "memory.max", "memory.current", "inactive_file"),
                                       ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes",
                                        "total_inactive_file")):
        try:
            with open(f"{folder}/{limit}") as f, open(f"{folder}/{used}") as g:
                free = int(f.read().strip()) - int(g.read().strip())
        except (OSError, ValueError):  # no such cgroup, or "max": no limit
            continue
        try:
            with open(f"{folder}/memory.stat") as f:
                free += next((int(line.split()[1]) for line in f if line.split()[0] == cache), 0)
        except (OSError, ValueError, IndexError):
            pass
        found.append(free)
    return max(0, min(found)) if found else None


def resolve_budget(value, provider: str = "CPUExecutionProvider") -> tuple[int, str]:
    """(bytes for one run, how they were chosen): a given size as it is; 'auto' as AUTO_RUN_BYTES
    says, capped at a quarter of the available memory; on a GPU (whose memory is not measured
    here) AUTO_GPU_RUN_BYTES, the old fixed default."""
    given = parse_bytes(value)
    if given is not None:
        return given, f"{human_size(given)} (given)"
    if provider != "CPUExecutionProvider":
        device = provider.removesuffix("ExecutionProvider").lower()
        return AUTO_GPU_RUN_BYTES, f"auto: {human_size(AUTO_GPU_RUN_BYTES)} per run on {device} (give a size to use more)"
    available = available_memory()
    if available is not None and available // AUTO_SHARE_OF_AVAILABLE < AUTO_RUN_BYTES:
        budget = available // AUTO_SHARE_OF_AVAILABLE
        return budget, f"auto: {human_size(budget)}, a quarter of the {human_size(available)} available"
    return AUTO_RUN_BYTES, f"auto: {human_size(AUTO_RUN_BYTES)} per run"


@dataclass(frozen=True)
class Budget:
    """The memory one run may take: `bytes`, `note` (how they were chosen, as summaries show it)
    and whether it was "auto" (which always grows to the least that works, see fit)."""
    bytes: int
    note: str
    auto: bool

    @classmethod
    def resolve(cls, value, provider: str = "CPUExecutionProvider") -> Budget:
        size, note = resolve_budget(value, provider)
        return cls(size, note, parse_bytes(value) is None)

    def fit(self, least: int, asked) -> Budget:
        """This budget for runs that need at least `least` bytes: auto grows to it (auto always
        works), a given size that is smaller is refused in one line (`asked`: as the user wrote it)."""
        if self.bytes >= least:
            return self
        if self.auto:
            return Budget(least, f"auto: {human_size(least)}, the least that works", True)
        raise UsageError(f"memory budget {asked} is too small for one step of one image; "
                         f"the smallest that works is {human_size(least)}")


def planned_run_bytes(value) -> int:
    """The bytes a run on another machine (an audit worker) is planned with: a given size as it
    is, auto as it is on a machine with enough memory (each worker resolves its own budget)."""
    given = parse_bytes(value)
    return AUTO_RUN_BYTES if given is None else given


def human_size(n: int) -> str:
    """A size that parse_bytes reads back as at least n (rounded up, never down)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n}{unit}" if unit == "B" else f"{math.ceil(n * 10) / 10:.1f}{unit}"
        n /= 1024
    return str(n)


_human = human_size  # the name it had in gnl_onnx/explain.py

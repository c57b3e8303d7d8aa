"""What the CPU offers the runtime: its model name, vector flags, and whether it runs bf16.

``cpu_caps`` reads the CPU model and flags from /proc/cpuinfo (avx512_bf16, amx_bf16) and, when OpenVINO is
installed, its OPTIMIZATION_CAPABILITIES ('BF16'). The precision choice, the measured engine choice, ``doctor``
and ``bench`` read it. A leaf: the standard library, and OpenVINO only when asked, lazily.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class CpuCaps:
    """What the CPU reports about itself."""

    model: str
    flags: frozenset[str] = field(default_factory=frozenset)
    ov_capabilities: tuple[str, ...] = ()

    @property
    def bf16(self) -> bool:
        return any(f in self.flags for f in BF16_FLAGS) or "BF16" in self.ov_capabilities

    @property
    def bf16_evidence(self) -> str:
        found = [f for f in BF16_FLAGS if f in self.flags]
        if "BF16" in self.ov_capabilities:
            found.append("OpenVINO BF16 capability")
        return ", ".join(found) if found else "no avx512_bf16/amx_bf16 flag and no OpenVINO BF16 capability"

    @property
    def key(self) -> str:
        """Identifies the CPU for the gate record: model name plus its vector/bf16 flags."""
        vec = sorted(f for f in self.flags if f.startswith(("avx", "amx")))
        return f"{self.model} [{' '.join(vec)}]"


def cpu_caps(cpuinfo: str | Path = "/proc/cpuinfo", ask_openvino: bool = True) -> CpuCaps:
    """The CPU's model name and flags (Linux /proc/cpuinfo) and OpenVINO's view of it, where available."""
    model, flags = platform.processor() or platform.machine(), frozenset()
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key == "flags" and not flags:
                flags = frozenset(value.split())
    except OSError:
        pass
    caps: tuple[str, ...] = ()
    if ask_openvino:
        try:
            import openvino as ov

            caps = tuple(str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        except Exception:  # noqa: BLE001 - not installed or no CPU plugin: the flags alone decide
            caps = ()
    return CpuCaps(model=model, flags=flags, ov_capabilities=caps)

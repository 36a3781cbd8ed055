"""What one SGLang release module (`v0_5_17`, `v0_5_23`) provides: the declared interface of the compat layer.

The façade (`compat/__init__.py`) holds what the releases share and calls only these members of the release in
use; `missing_members` checks a release module against the interface when it is loaded, so a port to a new
release fails at import with the names it lacks instead of an AttributeError mid-request.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, Mapping, Protocol, runtime_checkable


@runtime_checkable
class SGLangRelease(Protocol):
    VERSION: str
    TOLERANT_QWEN3_ASR: bool  # AutoConfig.register("qwen3_asr") must be made tolerant at import
    BENCHMARK_MODULES: Mapping[str, str]  # benchmark name -> the module it lives in
    UPSTREAM_COMMANDS: Mapping[str, str]  # benchmark name -> the module users run upstream
    GRAPH_DECODE: bool  # EntropyInfer's decode CUDA graph is supported on this release
    FREE_MEMORY: bool  # phase 2 (decode_free_memory) is supported on this release
    RANK_FIELDS: tuple[str, ...]  # ServerArgs fields that must be 1 (one rank)

    def register_resolution_hooks(self, register_hook: Callable, before: Callable[[Any], None],
                                  after: Callable[[Any], None]) -> None: ...

    def resolution_hook_counts(self, owner: str) -> dict[str, int]: ...

    def server_args_view(self, sa: Any) -> Any: ...

    def disable_graphs(self, sa: Any) -> None: ...

    def disable_prefill_graphs(self, sa: Any) -> None: ...

    def disable_overlap_schedule(self, sa: Any) -> bool: ...

    def resolve(self, sa: Any) -> None: ...

    def resolved_field(self, sa: Any, name: str, default: Any = None) -> Any: ...

    def set_bookkeeping(self, sa: Any, name: str, value: Any) -> None: ...

    def request_identity(self, req: Any) -> tuple[str | None, int | None]: ...


MEMBERS = tuple(sorted(set(SGLangRelease.__annotations__) | {
    name for name, value in vars(SGLangRelease).items() if callable(value) and not name.startswith("_")}))


def missing_members(module: ModuleType) -> list[str]:
    """The interface members a release module lacks (empty: it conforms)."""
    return [name for name in MEMBERS if not hasattr(module, name)]

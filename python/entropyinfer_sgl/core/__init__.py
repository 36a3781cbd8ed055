"""The method: configuration, prefill profiling, head typing and budgets, block selection, decode compression
planning, and the float32 references every kernel is tested against (`docs/architecture.md` draws the flow).

config -> profile (segment/block representatives, block scores, entropy) -> budgets (rigid/dynamic typing, the
budget recurrence) -> plan (per-kv-head CSR of key blocks) -> run (`reference`, the kernels, the runtime);
decode: observation scores -> per-kv-head kept entries (`decode`). `device_plan` plans on the GPU without host
syncs; `rust_planner` is the Rust planner behind the same signatures.
"""

"""The serving runtime: what an engine adapter (the SGLang plugin) drives, with no engine import.

- `chunk_plan`: profiling and planning of one prefill chunk (causal typing carried across chunks);
- `typing_records`: typing at segment boundaries, so that a prefix-cache hit resumes where its prefix was typed;
- `sparse_attention`: the SDPA block-sparse attention of a chunk (the CPU reference path; `hf.enable` too);
- `decode_table`: one decode compression event as per-kv-head position tables;
- `requests`: per-request state and the process's store;
- `kernel_path`: the same on Triton kernels over the engine's KV pool, with the decode-table arena;
- `compaction`: phase 2 (`decode_free_memory`): kept entries moved into the request's own slots.
"""

"""The megakernel path: a decode step compiled to a static instruction list (`isa`; `program` holds the program and
the builder, `program_llama` compiles Llama / Qwen3, `program_mla` GLM-5 / DeepSeek — the family registry names
which), run by a Python VM (`vm`, the oracle) or by one persistent Triton kernel (`megakernel` with the opcode bodies
in `ops` / `ops_mla` and isa's numbers in `constants`, launched by `kernel`); `runner` is `backend="mega"`."""

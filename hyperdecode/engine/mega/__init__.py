"""The megakernel path: a decode step compiled to a static instruction list (`isa`; `program` for the Llama family,
`program_mla` for GLM-5 / DeepSeek), run by a Python VM (`vm`, the oracle) or by one persistent Triton kernel
(`megakernel` with the opcode bodies in `ops` / `ops_mla`, launched by `kernel`); `runner` is `backend="mega"`."""

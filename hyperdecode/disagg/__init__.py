"""Prefill/decode disaggregation: instances that hand a prompt's cache to each other over NIXL.

- `config.py`: `--kv-transfer-config` (vLLM's flag and field names), the instance's role and side channel.
- `params.py`: `kv_transfer_params` on requests and responses, as vLLM's NixlConnector writes them.
- `layout.py`: which cache tensors of a row cross, their shapes and the digests both sides compare.
- `side_channel.py`: the HTTP handshake (NIXL agent metadata and layout) on its own port.
- `nixl.py`: the connector the engine core drives (engine/kv_connector.py's seam): hold a row, pull a row.

docs/disaggregation.md starts a prefill instance, a decode instance and vllm-router on one machine.
"""

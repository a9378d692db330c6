"""keepmesh: mutually attested mesh of TEE agents running WebAssembly keeps."""

__version__ = "0.1.0"

"""Keeps: WebAssembly workloads run under wasmtime with limits, sealed delivery and state."""

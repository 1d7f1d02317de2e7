"""Fault tests: real redis-server, the real sandbox API with injected faults, real workers."""

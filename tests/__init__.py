"""numahook's tests; docs/architecture.md says where each kind lives."""

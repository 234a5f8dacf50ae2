"""Compiling jaxthink's programs for TPU slices from any machine, and reading what the compiler
decided (fit, per-step copies and collectives)."""

"""The reference emulator: portable-fp8's numerics contract, executed on the CPU."""

"""The real-boot VM harness: a Debian guest under qemu against the emulated fabric."""

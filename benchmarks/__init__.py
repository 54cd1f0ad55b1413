"""Side-by-side benchmarks of peftkit against the reference peft; run ``python -m benchmarks.run``."""

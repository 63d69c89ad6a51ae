"""`python -m benchmarks`: the speed figures of the Lab, each a ratio of things measured side by side in one run."""

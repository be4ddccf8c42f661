"""Other projects' training code, run by the benchmarks on imgcls's own data and split."""

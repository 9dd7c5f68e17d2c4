"""Tools for developers: the provider simulator and the benchmark."""

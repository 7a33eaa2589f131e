"""qvit.profiling"""

"""Freshness benchmarks: the price of proving BOUNDED reads fresh."""

"""Checks: checks.d + conf.d → scheduled AgentCheck runs → series, events and service checks for the aggregator."""

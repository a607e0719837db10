"""Evaluation engine: prompt sets, async backend clients, scoring, reports."""

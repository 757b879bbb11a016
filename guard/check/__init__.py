"""Checking: verdicts and their head votes, the engines that produce them, explanations."""
